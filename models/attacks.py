"""Attacks for training and for the figures recipes record: ART's, through one wrapper.

The one exception is `virtual_adversarial`: ART's Virtual Adversarial Method estimates its gradient by finite
differences (a forward pass per pixel per iteration), far too slow inside a training loop, so the cascade
training uses the autograd power iteration of Miyato et al. that the AMC reference code takes from cleverhans.
The evaluation harness never uses it: every attack it reports is ART's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def art_classifier(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    num_classes: int,
    loss: nn.Module | None = None,
    device: str = "cpu",
):
    """ART's PyTorch wrapper around a logits model taking [0, 1] pixels; cross-entropy unless `loss`.

    With `device` "cuda" ART moves `model` to the GPU in place and runs the attack there (the caller moves
    it back when it needs it on the CPU again)."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=model.eval(),
        loss=loss or nn.CrossEntropyLoss(),
        input_shape=input_shape,
        nb_classes=num_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if torch.device(device).type == "cuda" else "cpu",
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
    """Untargeted PGD-L∞ with one random start (Madry et al.), ART's implementation, on the model's device
    (a recipe training on a GPU crafts there too)."""
    from art.attacks.evasion import ProjectedGradientDescent

    torch.manual_seed(seed)
    np.random.seed(seed)
    device = str(next(model.parameters()).device)
    attack = ProjectedGradientDescent(
        art_classifier(model, images.shape[1:], int(labels.max()) + 1, device=device),
        norm=np.inf,
        eps=epsilon,
        eps_step=step_size,
        max_iter=steps,
        num_random_init=1,
        batch_size=250,
        verbose=False,
    )
    return attack.generate(x=images, y=labels).astype(np.float32)


def _unit_l2(x: torch.Tensor) -> torch.Tensor:
    return x / x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))


def virtual_adversarial(
    model: nn.Module, images: torch.Tensor, *, eps: float, xi: float, iterations: int
) -> torch.Tensor:
    """Virtual adversarial examples (Miyato et al. 2018): the L2 direction of radius `eps` that most changes
    the model's own prediction, found by `iterations` power-iteration steps of size `xi` on the KL divergence;
    labels are not used. Runs in eval mode and leaves the model there."""
    model.eval()
    with torch.no_grad():
        reference = F.log_softmax(model(images), dim=1)
    direction = torch.randn_like(images)
    for _ in range(iterations):
        probe = (xi * _unit_l2(direction)).requires_grad_(True)
        divergence = F.kl_div(
            F.log_softmax(model(images + probe), dim=1), reference, log_target=True, reduction="sum"
        )
        (direction,) = torch.autograd.grad(divergence, probe)
    return (images + eps * _unit_l2(direction)).clamp(0.0, 1.0).detach()
