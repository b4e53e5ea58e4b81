"""APuDAE adaptive purification (Kalaria, Hazra, Chakrabarti, arXiv 2208.13838; reference code
dvij542/ae-adversary-purifier, `refine_BIM_prob_individual`), written so that it exports to ONNX.

Per image, delta starts at 0 and is optimised with Adam for T steps on
    loss = sum_i max(r_i - mu, 0)^2 / sigma^2,   r_i = ||x_i + delta_i - D(x_i + delta_i)||^2,
while uniform noise eps * min(((r_i - mu) / (2 sigma))^2, 4) * U(-1, 1) accumulates on x (clipped to [-1, 2]).
The classifier receives x + delta, not D(x), unless the config says `reform` (a DAE trained to undo
perturbations, whose output is meant to be classified). Images whose error is already at or below mu get no
gradient: that is what makes the purification adaptive.

NOTE: onnxruntime has no autograd and the exporters cannot export `torch.autograd.grad`, so the gradient
of r comes from the DAE's explicit VJP, and Adam's update equations are spelled out; the T steps are
unrolled into one graph, and the noise is `torch.rand_like` (ONNX RandomUniformLike).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.dae import DenoisingAutoencoder


@dataclass(frozen=True)
class PurifierConfig:
    mu: float
    """Mean clean reconstruction error, sum over C,H,W of (clip(D(x), 0, 1) - x)^2."""
    sigma: float
    """Its standard deviation over clean images."""
    steps: int = 13
    lr: float = 2 / 255
    epsilon: float = 0.7 / 255
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    reform: bool = False
    """Hand the classifier D(x + delta), the DAE's reconstruction, instead of x + delta. For a DAE trained
    with a classifier-guided loss (`models.dae.train_guided_dae`): its output, not the minimum of its
    reconstruction error, is what undoes a perturbation. Then `steps` may be 0 (D(x) alone): with the 13
    steps in front, the CIFAR-10 guided DAE kept 23.0% under the known-weights BIM at 8/255, without them
    68.5% (docs/ROBUSTNESS.md, `cifar10-rse-hgd`)."""

    def __post_init__(self) -> None:
        if self.steps < (0 if self.reform else 1):
            raise ValueError(f"steps must be at least {0 if self.reform else 1}, got {self.steps}")


def clipped_error(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-image sum of (clip(D(x), 0, 1) - x)^2: the statistic mu and sigma describe."""
    return ((reconstruction.clamp(0.0, 1.0) - x) ** 2).sum(dim=(1, 2, 3))


class AdaptivePurifier(nn.Module):
    """images [B,C,H,W] -> (purified x + delta, clipped error of the input, clipped error of the output)."""

    def __init__(self, dae: DenoisingAutoencoder, config: PurifierConfig, noise: bool = True) -> None:
        super().__init__()
        self.dae = dae
        self.config = config
        self.noise = noise
        """False only for parity tests: the purification becomes deterministic."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.config
        x = images
        delta = torch.zeros_like(images)
        m = torch.zeros_like(images)
        v = torch.zeros_like(images)
        reconstruction = self.dae(images)
        error_before = clipped_error(images, reconstruction)
        for step in range(1, c.steps + 1):
            shifted = x + delta
            reconstruction, saved = self.dae.forward_with_saved(shifted)
            residual = shifted - reconstruction
            error = (residual**2).sum(dim=(1, 2, 3))
            if self.noise:
                scale = c.epsilon * (((error - c.mu) / (2 * c.sigma)) ** 2).clamp(max=4.0)
                uniform = 2.0 * torch.rand_like(x) - 1.0
                x = (x + scale.view(-1, 1, 1, 1) * uniform).clamp(-1.0, 2.0)
            # d loss / d delta = 2 max(r - mu, 0) / sigma^2 * dr/dx, dr/dx = 2 (e - J_D^T e)
            weight = 2.0 * torch.relu(error - c.mu) / c.sigma**2
            grad = weight.view(-1, 1, 1, 1) * 2.0 * (residual - self.dae.vjp_from_saved(saved, residual))
            m = c.beta1 * m + (1 - c.beta1) * grad
            v = c.beta2 * v + (1 - c.beta2) * grad * grad
            m_hat = m / (1 - c.beta1**step)
            v_hat = v / (1 - c.beta2**step)
            # NOTE: mathematically a no-op, but the exported graph lost the bare "+ eps" (0/0 = NaN for the
            # images that get no gradient) until the denominator was clamped explicitly.
            denominator = torch.clamp(torch.sqrt(v_hat) + c.adam_eps, min=c.adam_eps)
            delta = delta - c.lr * m_hat / denominator
        purified = x + delta
        if c.reform:
            # NOTE: with no steps x + delta is the input itself, whose reconstruction is already at hand
            purified = (reconstruction if c.steps == 0 else self.dae(purified)).clamp(0.0, 1.0)
        return purified, error_before, clipped_error(purified, self.dae(purified))


def purify_with_autograd(
    dae: DenoisingAutoencoder, images: torch.Tensor, config: PurifierConfig
) -> torch.Tensor:
    """The reference formulation with torch autograd and torch.optim.Adam, noise off.

    Exists to check `AdaptivePurifier` (explicit VJP + hand-written Adam) against the library's own
    optimiser and autograd, and as the naive baseline the benchmark compares with.
    """
    x = images.detach()
    delta = torch.zeros_like(x, requires_grad=True)
    optimizer = torch.optim.Adam(
        [delta], lr=config.lr, betas=(config.beta1, config.beta2), eps=config.adam_eps
    )
    for _ in range(config.steps):
        shifted = x + delta
        error = ((shifted - dae(shifted)) ** 2).sum(dim=(1, 2, 3))
        loss = (torch.relu(error - config.mu) ** 2).sum() / config.sigma**2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    purified = x + delta
    if config.reform:
        purified = dae(purified).clamp(0.0, 1.0)
    return purified.detach()
