"""Seiler et al. (reproduction): the blend factor is drawn afresh for every batch from Beta(2, 10), the blend
is what it says, and the loss is cross-entropy plus the weighted KL term."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.seiler import SeilerConfig, blend, seiler_loss


def test_blend_factor_is_resampled_per_batch_from_beta_2_10() -> None:
    generator = torch.Generator().manual_seed(0)
    pool = torch.rand(50, 1, 4, 4)
    draws = [blend(torch.zeros(4, 1, 4, 4), pool, SeilerConfig(), generator)[1] for _ in range(3000)]
    assert len(set(draws)) == len(draws)
    assert all(0 < a < 1 for a in draws)
    assert abs(np.mean(draws) - 2 / 12) < 0.01  # Beta(2, 10) mean
    assert abs(np.var(draws) - 2 * 10 / (12**2 * 13)) < 0.002  # and variance


def test_blend_mixes_each_image_with_a_pool_image() -> None:
    generator = torch.Generator().manual_seed(1)
    pool = torch.stack([torch.full((1, 2, 2), float(v)) for v in range(1, 6)])
    images = torch.zeros(8, 1, 2, 2)
    mixed, a = blend(images, pool, SeilerConfig(), generator)
    partners = mixed / a  # images are 0, so the blend is a * partner
    assert torch.allclose(partners.round(), partners, atol=1e-4)
    assert set(partners.round().flatten().tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_loss_is_cross_entropy_plus_weighted_kl() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    images, labels = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    pool = torch.rand(20, 1, 4, 4)
    config = SeilerConfig()
    loss = seiler_loss(pool, config, torch.Generator().manual_seed(5))(model, images, labels)
    mixed, _ = blend(images, pool, config, torch.Generator().manual_seed(5))
    with torch.no_grad():
        p, q = F.softmax(model(images), 1), F.softmax(model(mixed), 1)
        kl = (p * (p.log() - q.log())).sum(1).mean()
        expected = F.cross_entropy(model(images), labels) + config.kl_weight * kl
    assert torch.isclose(loss.detach(), expected, rtol=1e-5)
    assert kl > 0
