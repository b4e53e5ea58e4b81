"""Deep Defense (Yan, Guo, Zhang, NeurIPS 2018; reference code ZiangYan/deepdefense.pytorch).

The regulariser penalises how *close* each training image lies to the decision boundary, measured by the
DeepFool perturbation r that reaches it: loss = CE + (1/B)·[Σ_correct λ·exp(−c·ρ) + Σ_wrong λ·exp(d·ρ)],
ρ = ‖r‖₂/‖x‖₂. The point of the method is that r is *differentiable in the weights*: the few DeepFool
iterations are unrolled with `create_graph=True`, so the gradient of the penalty moves the boundary away from
the correctly classified images (and towards fixing the misclassified ones). A DeepFool run without the graph
(`differentiable=False`) is the same algorithm and serves to measure ρ₂, the paper's robustness metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.train import LossFn


@dataclass(frozen=True)
class DeepDefenseConfig:
    """The reference defaults for MNIST."""

    lam: float = 15.0
    c: float = 25.0
    """Weight of ρ in exp(−c·ρ) for correctly classified images."""
    d: float = 5.0
    """Weight of ρ in exp(d·ρ) for misclassified images."""
    max_iter: int = 5
    overshoot: float = 0.02
    """The perturbation is scaled by 1 + overshoot (the reference's 1.02)."""


def _class_gradients(
    logits: torch.Tensor, x: torch.Tensor, classes: torch.Tensor, create_graph: bool
) -> torch.Tensor:
    """∂ logits[i, classes[i, j]] / ∂ x[i] for every image i and column j: [B, J, *x.shape[1:]].

    Each image's logits depend on that image alone (the model runs in eval mode), so the gradient of a sum
    over the batch is the stack of per-image gradients: one backward pass per column.
    """
    columns = []
    for j in range(classes.shape[1]):
        picked = logits.gather(1, classes[:, j : j + 1]).sum()
        (grad,) = torch.autograd.grad(picked, x, create_graph=create_graph, retain_graph=True)
        columns.append(grad)
    return torch.stack(columns, dim=1)


def deepfool(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: DeepDefenseConfig,
    differentiable: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepFool's minimal L2 perturbation r for each image, and whether the perturbed image changed side.

    Correctly classified images move towards the nearest other class (linearised); misclassified ones
    move towards their true label only. An image stops contributing steps once its decision has flipped.
    With `differentiable`, r keeps its graph back to the weights (the images themselves get no gradient).
    No clipping to the pixel range: ρ measures distance to the boundary, not a realisable attack.
    """
    model.eval()
    x0 = images.detach()
    batch = len(x0)
    expand = (-1, *[1] * (x0.dim() - 1))
    r_total = torch.zeros_like(x0)
    with torch.no_grad():
        correct = model(x0).argmax(1) == labels
    active = torch.ones(batch, dtype=torch.bool)
    for _ in range(config.max_iter):
        x = x0 + (1 + config.overshoot) * r_total
        if not x.requires_grad:
            x.requires_grad_(True)
        logits = model(x)
        prediction = logits.argmax(1)
        # NOTE: correct images are done once they leave their label; wrong ones once they reach it.
        active = active & torch.where(correct, prediction == labels, prediction != labels)
        if not active.any():
            break
        num_classes = logits.shape[1]
        origin = torch.where(correct, labels, prediction)
        every = torch.arange(num_classes).expand(batch, -1)
        others = every[every != origin[:, None]].view(batch, num_classes - 1)
        targets = torch.where(correct[:, None], others, labels[:, None].expand_as(others))
        columns = torch.cat([origin[:, None], targets], dim=1)
        grads = _class_gradients(logits, x, columns, create_graph=differentiable)
        w = grads[:, 1:] - grads[:, :1]
        f = logits.gather(1, columns[:, 1:]) - logits.gather(1, columns[:, :1])
        # NOTE: not `.norm()`, whose gradient at w = 0 (a dead network's) is NaN and poisons the weights.
        w_norm = torch.sqrt(w.flatten(2).pow(2).sum(dim=2) + 1e-16)
        distance = f.abs() / w_norm
        nearest = distance.argmin(dim=1)
        pick = torch.arange(batch)
        step = ((distance[pick, nearest] + 1e-4) / w_norm[pick, nearest]).view(expand) * w[pick, nearest]
        r_total = r_total + torch.where(active.view(expand), step, torch.zeros_like(step))
        if not differentiable:
            r_total = r_total.detach()
    with torch.no_grad():
        final = model(x0 + (1 + config.overshoot) * r_total).argmax(1)
    flipped = torch.where(correct, final != labels, final == labels)
    return (1 + config.overshoot) * r_total, flipped


def relative_norm(r: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """ρ = ‖r‖₂ / ‖x‖₂ per image."""
    return r.flatten(1).norm(dim=1) / images.flatten(1).norm(dim=1).clamp_min(1e-12)


def deep_defense_loss(config: DeepDefenseConfig) -> LossFn:
    """The training loss as a `models.train.LossFn`: BatchNorm frozen (eval mode), as in the reference."""

    def loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        r, _ = deepfool(model, images, labels, config, differentiable=True)
        rho = relative_norm(r, images)
        logits = model(images)
        correct = logits.argmax(1) == labels
        penalty = torch.where(correct, torch.exp(-config.c * rho), torch.exp(config.d * rho))
        return F.cross_entropy(logits, labels) + config.lam * penalty.mean()

    return loss


def mean_rho(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, max_iter: int = 50, batch: int = 250
) -> dict[str, float]:
    """The paper's ρ₂: mean DeepFool ‖r‖₂/‖x‖₂ over `images` (non-differentiable run of up to `max_iter`
    iterations), with the share of images whose decision DeepFool actually flipped."""
    config = DeepDefenseConfig(max_iter=max_iter)
    values, flips = [], []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start : start + batch])
        y = torch.from_numpy(labels[start : start + batch])
        r, flipped = deepfool(model, x, y, config, differentiable=False)
        values.append(relative_norm(r, x).detach())
        flips.append(flipped)
    return {"rho2": float(torch.cat(values).mean()), "flipped": float(torch.cat(flips).float().mean())}
