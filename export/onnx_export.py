"""Torch -> ONNX for the self-ensemble graph, noise included.

The graph is exported with the dynamo exporter as one self-contained file: the `samples` input is a scalar
and the B x N tiling happens in the graph, so N is chosen per call while the batch axis stays dynamic.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from models.rse import SelfEnsemble, noise_disabled

OPSET = 18
ENSEMBLE_INPUTS = ["images", "samples"]
ENSEMBLE_OUTPUTS = ["probabilities"]


def export_ensemble(
    classifier: nn.Module, path: Path, *, input_shape: tuple[int, int, int], deterministic: bool = False
) -> Path:
    """Write the ensemble graph of `classifier` to `path`.

    `deterministic=True` leaves the noise layers out (for parity tests only; never ship it).
    """
    ensemble = SelfEnsemble(classifier).eval()
    example = (torch.rand(2, *input_shape), torch.tensor(3, dtype=torch.int64))
    path.parent.mkdir(parents=True, exist_ok=True)
    context = noise_disabled(classifier) if deterministic else contextlib.nullcontext()
    # NOTE: the exporter prints progress and warns about torchvision ops it skips; neither matters here.
    with context, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            ensemble,
            example,
            dynamo=True,
            input_names=ENSEMBLE_INPUTS,
            output_names=ENSEMBLE_OUTPUTS,
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}, "samples": None},
            opset_version=OPSET,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path))
    random_ops = [
        node.op_type for node in onnx.load(str(path)).graph.node if node.op_type.startswith("Random")
    ]
    if deterministic == bool(random_ops):
        raise RuntimeError(
            f"{path}: expected {'no' if deterministic else 'some'} random ops, found {random_ops}"
        )
    return path
