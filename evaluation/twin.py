"""A differentiable torch twin of an exported bundle, rebuilt from the bundle's own ONNX weights.

Adaptive attacks need gradients, and onnxruntime has none. The twin is built from the very bytes the
service serves (the manifest's hashes are verified first), not from a checkpoint that could differ from
them: the recipe's torch modules are instantiated and every parameter is read from the graph's
initializers by name. Where the exporter folded an eval-mode BatchNorm into the convolution before it, the
BatchNorm's parameters are absent from the graph and the twin drops that layer (the folded weights are
already in the conv). `check_parity` proves the result: with the graphs' random ops pinned to their
centres, the twin and the ONNX graphs must agree to float precision, and the noise scales in the graph
must be the twin's.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from evaluation.recipes import BundleRecipe
from export.onnx_export import pin_random_ops
from models.purify import AdaptivePurifier, PurifierConfig
from models.rse import GaussianNoise, ensemble_probabilities, noise_disabled, noise_layers
from service.manifest import Manifest, load_manifest
from service.runtime import EnsembleEngine, PurifierEngine

CPU = ["CPUExecutionProvider"]
PURIFICATION_FIELDS = {"mu", "sigma", "steps", "lr", "epsilon", "reform"}
"""What the manifest's purifier section says of the purification itself (the rest describes its data)."""


@dataclass(frozen=True)
class Twin:
    """The bundle's classifier (logits, RSE noise on) and, when it has one, its adaptive purifier."""

    manifest: Manifest
    bundle_dir: Path
    classifier: nn.Module
    purifier: AdaptivePurifier | None


def onnx_weights(path: Path) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}


def _drop_folded_batch_norms(module: nn.Module, weights: dict[str, np.ndarray], prefix: str) -> None:
    """Replace every BatchNorm whose parameters the graph lacks by Identity; only valid right after a conv."""
    for name, child in list(module.named_children()):
        qualified = f"{prefix}{name}"
        if isinstance(child, nn.BatchNorm2d) and f"{qualified}.weight" not in weights:
            siblings = list(module.named_children())
            position = [n for n, _ in siblings].index(name)
            if position == 0 or not isinstance(siblings[position - 1][1], nn.Conv2d):
                raise ValueError(f"{qualified}: BatchNorm missing from the graph but not after a conv")
            setattr(module, name, nn.Identity())
        else:
            _drop_folded_batch_norms(child, weights, f"{qualified}.")


def load_graph_weights(module: nn.Module, weights: dict[str, np.ndarray], prefix: str) -> nn.Module:
    """Fill `module` from ONNX initializers named `prefix + state_dict key`; every key must be there."""
    _drop_folded_batch_norms(module, weights, prefix)
    # NOTE: BatchNorm's step counter takes no part in the function, so the graph does not carry it.
    state = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [key for key in state if f"{prefix}{key}" not in weights]
    if missing:
        raise ValueError(f"the graph has no initializers for {missing[:5]} (prefix {prefix!r})")
    loaded = {}
    for key, value in state.items():
        array = weights[f"{prefix}{key}"]
        if tuple(array.shape) != tuple(value.shape):
            raise ValueError(
                f"{prefix}{key}: graph has shape {array.shape}, twin expects {tuple(value.shape)}"
            )
        loaded[key] = torch.from_numpy(array.copy()).to(value.dtype)
    module.load_state_dict(loaded, strict=False)
    return module.eval()


def load_twin(bundle_dir: Path, recipe: BundleRecipe) -> Twin:
    manifest = load_manifest(bundle_dir, verify=True)
    classifier = recipe.classifier(manifest, manifest.rse.sigma_init, manifest.rse.sigma_inner)
    load_graph_weights(classifier, onnx_weights(bundle_dir / manifest.graphs["ensemble"].path), "classifier.")
    purifier = None
    if manifest.purifier is not None:
        if recipe.dae is None:
            raise ValueError(f"{manifest.name} has a purifier but its recipe names no DAE")
        spec = manifest.purifier
        config = PurifierConfig(**spec.model_dump(include=PURIFICATION_FIELDS))
        purifier = AdaptivePurifier(recipe.dae(manifest), config)
        load_graph_weights(purifier, onnx_weights(bundle_dir / manifest.graphs["purifier"].path), "")
    return Twin(manifest, bundle_dir, classifier.eval(), purifier)


# --- parity with the graphs --------------------------------------------------------------------------------
def graph_noise_scales(path: Path) -> list[float]:
    """The constant each RandomNormalLike output is multiplied by, in graph order: the exported sigmas."""
    model = onnx.load(str(path))
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    random_outputs = {n.output[0] for n in model.graph.node if n.op_type == "RandomNormalLike"}
    scales = []
    for node in model.graph.node:
        if node.op_type == "Mul" and random_outputs & set(node.input):
            (other,) = [name for name in node.input if name not in random_outputs]
            scales.append(float(np.asarray(constants[other]).reshape(-1)[0]))
    if len(scales) != len(random_outputs):
        raise ValueError(f"{path}: found scales for {len(scales)} of {len(random_outputs)} noise draws")
    return scales


def twin_noise_scales(classifier: nn.Module) -> list[float]:
    return [layer.sigma for layer in noise_layers(classifier) if isinstance(layer, GaussianNoise)]


@torch.no_grad()
def check_parity(twin: Twin, images: np.ndarray) -> dict[str, float]:
    """Largest |twin - graph| over `images` with the noise off on both sides, and the noise scales compared.

    Raises when the graph's noise scales are not the twin's: that twin would attack a different model.
    """
    ensemble_path = twin.bundle_dir / twin.manifest.graphs["ensemble"].path
    graph_scales, own_scales = graph_noise_scales(ensemble_path), twin_noise_scales(twin.classifier)
    if not np.allclose(sorted(graph_scales), sorted(s for s in own_scales if s > 0), atol=1e-6):
        raise ValueError(f"noise scales differ: graph {graph_scales}, twin {own_scales}")
    result = {"noise_scales": float(len(graph_scales))}
    with tempfile.TemporaryDirectory() as folder:
        pinned = EnsembleEngine(pin_random_ops(ensemble_path, Path(folder) / "e.onnx"), providers=CPU)
        # NOTE: two passes where the odd one is mirrored, so that the flip is checked too
        mirrored = twin.manifest.rse.mirrored_passes
        passes = 2 if mirrored else 1
        graph = pinned.run(images, passes)
        with noise_disabled(twin.classifier):
            own = ensemble_probabilities(
                twin.classifier, torch.from_numpy(images), passes, mirrored=mirrored
            ).numpy()
        result["ensemble_max_abs_diff"] = float(np.abs(graph - own).max())
        if twin.purifier is not None:
            path = twin.bundle_dir / twin.manifest.graphs["purifier"].path
            engine = PurifierEngine(pin_random_ops(path, Path(folder) / "p.onnx"), providers=CPU)
            graph_outputs = engine.run(images)
            twin.purifier.noise = False
            try:
                own_outputs = [t.numpy() for t in twin.purifier(torch.from_numpy(images))]
            finally:
                twin.purifier.noise = True
            # NOTE: Adam divides by sqrt(v); where a pixel's gradient is ~0, float rounding decides the sign of a
            # full lr-sized step, so a few pixels differ by up to 2 lr per step while the mean stays ~1e-5. A
            # reforming purifier's DAE spreads those pixels over its output: the mean rises to ~1e-3 while
            # the classifier's answers stay the same (`purifier_label_disagreement`).
            difference = np.abs(graph_outputs[0] - own_outputs[0])
            result["purifier_max_abs_diff"] = float(difference.max())
            result["purifier_mean_abs_diff"] = float(difference.mean())
            with noise_disabled(twin.classifier):
                labels = [
                    twin.classifier(torch.from_numpy(o)).argmax(1) for o in (graph_outputs[0], own_outputs[0])
                ]
            result["purifier_label_disagreement"] = float((labels[0] != labels[1]).float().mean())
            result["purifier_error_max_rel_diff"] = float(
                max(
                    np.abs(g - o).max() / max(np.abs(g).max(), 1e-12)
                    for g, o in zip(graph_outputs[1:], own_outputs[1:], strict=True)
                )
            )
    return result
