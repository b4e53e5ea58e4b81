"""Torch -> ONNX for the bundle graphs, their randomness included.

Each graph is exported with the dynamo exporter as one self-contained file (no external data) with a
dynamic batch axis. The ensemble graph takes N as a scalar input and tiles B x N rows inside the graph;
the purifier graph unrolls all T purification steps, the DAE's explicit VJP and Adam's update equations.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import onnx
import onnx.utils
import torch
from torch import nn

from models.dae import DenoisingAutoencoder
from models.purify import AdaptivePurifier, PurifierConfig
from models.rse import SelfEnsemble, draws_noise, noise_disabled

OPSET = 18
ENSEMBLE_INPUTS = ["images", "samples"]
ENSEMBLE_OUTPUTS = ["probabilities"]
PURIFIER_INPUTS = ["images"]
PURIFIER_OUTPUTS = ["purified", "error_before", "error_after"]
SCREEN_INPUTS = ["images"]
SCREEN_OUTPUTS = ["error_before"]


def _export(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    *,
    inputs: list[str],
    outputs: list[str],
    dynamic_shapes: dict[str, dict[int, torch.export.Dim] | None],
    random: bool,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # NOTE: the exporter prints progress and warns about torchvision ops it skips; neither matters here.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module.eval(),
            example,
            dynamo=True,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path))
    random_ops = [
        node.op_type for node in onnx.load(str(path)).graph.node if node.op_type.startswith("Random")
    ]
    if random != bool(random_ops):
        raise RuntimeError(f"{path}: expected {'some' if random else 'no'} random ops, found {random_ops}")
    return path


def export_ensemble(
    classifier: nn.Module, path: Path, *, input_shape: tuple[int, int, int], deterministic: bool = False
) -> Path:
    """Write the self-ensemble graph of `classifier`; `deterministic=True` (parity tests only) drops the noise.
    A classifier without noise (the training-time defenses) exports without random ops."""
    example = (torch.rand(2, *input_shape), torch.tensor(3, dtype=torch.int64))
    context = noise_disabled(classifier) if deterministic else contextlib.nullcontext()
    with context:
        return _export(
            SelfEnsemble(classifier),
            example,
            path,
            inputs=ENSEMBLE_INPUTS,
            outputs=ENSEMBLE_OUTPUTS,
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}, "samples": None},
            random=not deterministic and draws_noise(classifier),
        )


def export_purifier(
    dae: DenoisingAutoencoder,
    config: PurifierConfig,
    path: Path,
    *,
    input_shape: tuple[int, int, int],
    deterministic: bool = False,
) -> Path:
    """Write the unrolled adaptive purification; `deterministic=True` (parity tests only) drops its noise."""
    return _export(
        AdaptivePurifier(dae.eval(), config, noise=not deterministic),
        (torch.rand(2, *input_shape),),
        path,
        inputs=PURIFIER_INPUTS,
        outputs=PURIFIER_OUTPUTS,
        dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
        random=not deterministic,
    )


def extract_screen(purifier_path: Path, path: Path) -> Path:
    """Cut the purifier graph down to what computes `error_before` (one DAE forward): the screen that lets
    the service skip purification for inputs that would get no gradient.

    Cut from the exported graph rather than exported anew, so the screen is bit-for-bit the purifier's own
    first forward and can be added to an existing bundle without retraining.
    """
    onnx.utils.extract_model(str(purifier_path), str(path), SCREEN_INPUTS, SCREEN_OUTPUTS)
    onnx.checker.check_model(str(path))
    return path
