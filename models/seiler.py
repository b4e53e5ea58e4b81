"""Transferable-adversary hardening after Seiler, Trautmann, Kerschke (IJCNN 2020), as reproduced.

The paper's full text is not at hand; this follows the known reproduction of its defense, which "only requires
a single additional forward pass": each batch is blended with random training images,
x̃ = (1 − a)·x + a·x_rand with one a ~ Beta(2, 10) drawn per batch, and the loss asks the model to answer x̃
like x: CE(y, f(x)) + λ·KL(f(x) ‖ f(x̃)), λ = 10. Small blends of other images are what transferable
adversarial perturbations look like (they carry features of other classes), so a model that ignores them is
harder to fool by transfer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.train import LossFn


@dataclass(frozen=True)
class SeilerConfig:
    kl_weight: float = 10.0
    beta_a: float = 2.0
    beta_b: float = 10.0


def blend(
    images: torch.Tensor, pool: torch.Tensor, config: SeilerConfig, generator: torch.Generator
) -> tuple[torch.Tensor, float]:
    """(1 − a)·images + a·(random images from `pool`), a drawn afresh from Beta(beta_a, beta_b)."""
    # NOTE: torch.distributions cannot take a Generator; Beta(p, q) = X / (X + Y), X ~ Gamma(p), Y ~ Gamma(q).
    x = torch._standard_gamma(torch.tensor([config.beta_a]), generator=generator)
    y = torch._standard_gamma(torch.tensor([config.beta_b]), generator=generator)
    a = float(x / (x + y))
    partners = pool[torch.randint(0, len(pool), (len(images),), generator=generator)].to(images.device)
    return (1 - a) * images + a * partners, a


def seiler_loss(pool: torch.Tensor, config: SeilerConfig, generator: torch.Generator) -> LossFn:
    """The training loss as a `models.train.LossFn`; `pool` holds the training images blended in."""

    def loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        blended, _ = blend(images, pool, config, generator)
        logits = model(torch.cat([images, blended]))
        clean, mixed = logits.split(len(images))
        log_p, log_q = F.log_softmax(clean, dim=1), F.log_softmax(mixed, dim=1)
        # KL(f(x) ‖ f(x̃)) = Σ p (log p − log q); F.kl_div(input=log q, target=log p) computes exactly that.
        divergence = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
        return F.cross_entropy(clean, labels) + config.kl_weight * divergence

    return loss
