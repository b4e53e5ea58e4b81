"""Deep Defense: the unrolled, differentiable DeepFool is DeepFool (exact on an affine classifier, close to
ART's on a CNN), and its perturbation carries gradient back into the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.attacks import art_classifier
from models.deep_defense import DeepDefenseConfig, deep_defense_loss, deepfool, mean_rho, relative_norm

CONFIG = DeepDefenseConfig()


def test_one_step_reaches_the_nearest_boundary_of_an_affine_classifier() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    images = torch.rand(8, 1, 3, 4)
    with torch.no_grad():
        logits = model(images)
    labels = logits.argmax(1)
    r, flipped = deepfool(model, images, labels, CONFIG, differentiable=False)
    assert flipped.all()
    weight = model[1].weight.detach()
    for i in range(len(images)):
        k = labels[i]
        gaps = [(logits[i, k] - logits[i, j]) / (weight[j] - weight[k]).norm() for j in range(4) if j != k]
        # DeepFool's step lands on the nearest hyperplane (plus its 1e-4 margin), scaled by 1 + overshoot.
        expected = (1 + CONFIG.overshoot) * (min(gaps) + 1e-4)
        assert torch.isclose(r[i].norm(), expected, rtol=1e-4)


@pytest.fixture
def cnn_batch(small_cnn, mnist_split):
    images, labels = mnist_split.test.images[:24], mnist_split.test.labels[:24]
    return small_cnn, torch.from_numpy(images), torch.from_numpy(labels)


def test_differentiable_and_plain_runs_agree_and_match_art(cnn_batch) -> None:
    from art.attacks.evasion import DeepFool

    model, images, labels = cnn_batch
    # NOTE: digits squeezed into [0.25, 0.75], so that ART's clipping to [0, 1] after every step (the
    # regulariser measures the unclipped distance) does not bite.
    images = 0.25 + 0.5 * images
    with torch.no_grad():
        labels = model(images).argmax(1)  # ART moves away from the prediction; so do we on correct images
    r_graph, _ = deepfool(model, images, labels, CONFIG, differentiable=True)
    r_plain, flipped = deepfool(model, images, labels, CONFIG, differentiable=False)
    assert r_graph.grad_fn is not None and r_plain.grad_fn is None
    torch.testing.assert_close(r_graph.detach(), r_plain, rtol=1e-4, atol=1e-6)
    attack = DeepFool(
        art_classifier(model, (1, 28, 28), 10),
        max_iter=CONFIG.max_iter,
        epsilon=CONFIG.overshoot,
        nb_grads=10,
        verbose=False,
    )
    art_norms = np.linalg.norm((attack.generate(images.numpy()) - images.numpy()).reshape(24, -1), axis=1)
    ours = r_plain.flatten(1).norm(dim=1).numpy()
    assert flipped.all()
    np.testing.assert_allclose(ours, art_norms, rtol=0.02)


def test_the_penalty_reaches_the_weights_through_the_perturbation(cnn_batch) -> None:
    model, images, labels = cnn_batch
    r, _ = deepfool(model, images, labels, CONFIG, differentiable=True)
    relative_norm(r, images).sum().backward()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_loss_is_cross_entropy_plus_the_exponential_penalty(cnn_batch) -> None:
    model, images, labels = cnn_batch
    loss = deep_defense_loss(CONFIG)(model, images, labels)
    rho = relative_norm(deepfool(model, images, labels, CONFIG, differentiable=False)[0], images)
    with torch.no_grad():
        logits = model(images)
        correct = logits.argmax(1) == labels
        penalty = torch.where(correct, torch.exp(-CONFIG.c * rho), torch.exp(CONFIG.d * rho))
        expected = nn.functional.cross_entropy(logits, labels) + CONFIG.lam * penalty.mean()
    assert torch.isclose(loss.detach(), expected, rtol=1e-4)
    figures = mean_rho(model, images.numpy(), labels.numpy(), max_iter=10)
    assert 0 < figures["rho2"] < 1 and 0 < figures["flipped"] <= 1
