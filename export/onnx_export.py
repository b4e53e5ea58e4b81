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

import numpy as np
import onnx
import onnx.utils
import torch
from onnx import numpy_helper
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
RANDOM_OPS = ("RandomNormalLike", "RandomUniformLike", "RandomNormal", "RandomUniform")


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
    classifier: nn.Module,
    path: Path,
    *,
    input_shape: tuple[int, int, int],
    deterministic: bool = False,
    mirrored: bool = False,
) -> Path:
    """Write the self-ensemble graph of `classifier`; `deterministic=True` (parity tests only) drops the noise.
    A classifier without noise (the training-time defenses) exports without random ops. `mirrored`: odd
    passes classify the image flipped left-right (`models.rse.ensemble_rows`)."""
    example = (torch.rand(2, *input_shape), torch.tensor(3, dtype=torch.int64))
    context = noise_disabled(classifier) if deterministic else contextlib.nullcontext()
    with context:
        return _export(
            SelfEnsemble(classifier, mirrored=mirrored),
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
        random=not deterministic and config.steps > 0,
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


def pin_random_ops(source: Path, target: Path) -> Path:
    """A copy of a graph whose random ops return their distribution's centre: N(m, s) -> m, U(a, b) -> (a+b)/2.

    The noise in our graphs is centred (x + s * N(0, 1), 2 U(0, 1) - 1), so this is the graph with its noise
    switched off, every other node exactly as served. Each random op becomes (x - x) + centre, a tensor of
    the input's shape; a zero scale is no way out, since onnxruntime refuses a normal with stddev 0.
    """
    model = onnx.load(str(source))
    nodes = []
    for node in model.graph.node:
        if node.op_type not in RANDOM_OPS or not node.op_type.endswith("Like"):
            if node.op_type in RANDOM_OPS:
                raise ValueError(f"{source}: {node.op_type} has no input to take the shape from")
            nodes.append(node)
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "RandomNormalLike":
            centre = attributes.get("mean", 0.0)
        else:
            centre = (attributes.get("low", 0.0) + attributes.get("high", 1.0)) / 2
        zeros, constant = f"{node.output[0]}__zeros", f"{node.output[0]}__centre"
        model.graph.initializer.append(numpy_helper.from_array(np.array(centre, np.float32), constant))
        nodes.append(onnx.helper.make_node("Sub", [node.input[0], node.input[0]], [zeros]))
        # NOTE: CastLike: the centre takes the random op's own type (float16 in an FP16 graph)
        nodes.append(onnx.helper.make_node("CastLike", [constant, zeros], [f"{constant}__typed"]))
        nodes.append(onnx.helper.make_node("Add", [zeros, f"{constant}__typed"], [node.output[0]]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(target))
    return target
