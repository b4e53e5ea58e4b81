"""Real attacks from the Adversarial Robustness Toolbox (ART), never hand-written ones.

Used by recipes to record robustness in the manifest; the full evaluation harness builds on the same wrapper.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def art_classifier(
    model: nn.Module, input_shape: tuple[int, int, int], num_classes: int, loss: nn.Module | None = None
):
    """ART's PyTorch wrapper around a logits model taking [0, 1] pixels; cross-entropy unless `loss`."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=model.eval(),
        loss=loss or nn.CrossEntropyLoss(),
        input_shape=input_shape,
        nb_classes=num_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


def pgd_linf(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epsilon: float,
    step_size: float,
    steps: int,
    seed: int = 0,
) -> np.ndarray:
    """Untargeted PGD-L∞ with one random start (Madry et al.), ART's implementation."""
    from art.attacks.evasion import ProjectedGradientDescent

    torch.manual_seed(seed)
    np.random.seed(seed)
    attack = ProjectedGradientDescent(
        art_classifier(model, images.shape[1:], int(labels.max()) + 1),
        norm=np.inf,
        eps=epsilon,
        eps_step=step_size,
        max_iter=steps,
        num_random_init=1,
        batch_size=250,
        verbose=False,
    )
    return attack.generate(x=images, y=labels).astype(np.float32)
