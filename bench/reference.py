"""The naive way, as the reference code runs a defended model: PyTorch eager, the N noisy passes one after
another, purification with torch autograd and `torch.optim.Adam`, one request (one image) at a time.

The torch modules are the evaluation harness's twin of the bundle (`evaluation.twin`), rebuilt from the
bundle's own ONNX weights and checked against its graphs there, so the baseline runs the model the service
serves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from evaluation.recipes import recipe_for
from evaluation.twin import load_twin
from models.purify import purify_with_autograd
from service.manifest import load_manifest


class NaivePipeline:
    """purify (autograd, T steps) -> N sequential noisy passes -> mean softmax, for one image at a time."""

    def __init__(self, bundle_dir: Path, device: torch.device | str = "cpu") -> None:
        twin = load_twin(bundle_dir, recipe_for(load_manifest(bundle_dir)))
        if twin.purifier is None:
            raise ValueError(f"{bundle_dir}: the naive pipeline needs a bundle with a purifier")
        self.device = torch.device(device)
        self.classifier = twin.classifier.to(self.device)
        self.dae = twin.purifier.dae.to(self.device)
        self.config = twin.purifier.config

    def __call__(self, image: np.ndarray, samples: int, purify: bool) -> np.ndarray:
        """The answer on the host, as a request needs it (on a GPU the copy back also waits for the work)."""
        x = torch.from_numpy(image).to(self.device)
        if purify:
            x = purify_with_autograd(self.dae, x, self.config)
        with torch.no_grad():
            probabilities = torch.stack([torch.softmax(self.classifier(x), -1) for _ in range(samples)])
            return probabilities.mean(0).cpu().numpy()
