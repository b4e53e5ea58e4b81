"""The naive way, as the reference code runs a defended model: PyTorch eager, the N noisy passes one after
another, purification with torch autograd and `torch.optim.Adam`, one request (one image) at a time.

The torch modules are rebuilt from the bundle's own ONNX weights, so the baseline runs the same model the
service serves: the DAE's parameters map one to one; the exporter folded each BatchNorm into the conv
before it, so those convs take the folded weights and their BatchNorms become identities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from models.dae import DenoisingAutoencoder, mnist_dae
from models.purify import PurifierConfig, purify_with_autograd
from models.rse import MNIST_SMALL, RSEClassifier
from service.manifest import Manifest


def _initializers(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    graph = onnx.load(str(path)).graph
    return {
        item.name.removeprefix(prefix): torch.from_numpy(numpy_helper.to_array(item).copy())
        for item in graph.initializer
        if item.name.startswith(prefix)
    }


def load_classifier(bundle_dir: Path, manifest: Manifest) -> RSEClassifier:
    model = RSEClassifier(
        MNIST_SMALL, sigma_init=manifest.rse.sigma_init, sigma_inner=manifest.rse.sigma_inner
    )
    weights = _initializers(bundle_dir / manifest.graphs["ensemble"].path, "classifier.")
    state = model.state_dict()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
            module.running_mean.zero_()
            module.running_var.fill_(1.0 - module.eps)
    missing = [key for key in weights if key not in state]
    if missing:
        raise ValueError(f"ONNX weights with no torch parameter: {missing}")
    model.load_state_dict({**model.state_dict(), **weights})
    return model.eval()


def load_dae(bundle_dir: Path, manifest: Manifest) -> DenoisingAutoencoder:
    dae = mnist_dae()
    dae.load_state_dict(_initializers(bundle_dir / manifest.graphs["purifier"].path, "dae."))
    return dae.eval()


class NaivePipeline:
    """purify (autograd, 13 steps) -> N sequential noisy passes -> mean softmax, for one image at a time."""

    def __init__(self, bundle_dir: Path, manifest: Manifest) -> None:
        self.classifier = load_classifier(bundle_dir, manifest)
        self.dae = load_dae(bundle_dir, manifest)
        spec = manifest.purifier
        self.config = PurifierConfig(
            mu=spec.mu, sigma=spec.sigma, steps=spec.steps, lr=spec.lr, epsilon=spec.epsilon
        )

    def __call__(self, image: np.ndarray, samples: int, purify: bool) -> np.ndarray:
        x = torch.from_numpy(image)
        if purify:
            x = purify_with_autograd(self.dae, x, self.config)
        with torch.no_grad():
            return (
                torch.stack([torch.softmax(self.classifier(x), -1) for _ in range(samples)]).mean(0).numpy()
            )
