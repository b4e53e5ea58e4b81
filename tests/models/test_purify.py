"""The exportable purification (explicit VJP, hand-written Adam) against torch autograd and torch.optim.Adam."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models.dae import mnist_dae, reconstruction_error
from models.purify import AdaptivePurifier, PurifierConfig, purify_with_autograd


def _dae_and_config() -> tuple[torch.nn.Module, PurifierConfig, torch.Tensor]:
    torch.manual_seed(0)
    dae = mnist_dae().eval()
    images = torch.rand(6, 1, 28, 28)
    errors = reconstruction_error(dae, images).detach()
    # mu between the errors: some images get a gradient, the others must be left alone
    return dae, PurifierConfig(mu=float(errors.median()), sigma=float(errors.std())), images


def test_matches_autograd_and_torch_adam() -> None:
    dae, config, images = _dae_and_config()
    with torch.no_grad():
        purified, before, after = AdaptivePurifier(dae, config, noise=False)(images)
    reference = purify_with_autograd(dae, images, config)
    assert (purified - reference).abs().max() < 1e-5
    moved = (purified - images).abs().flatten(1).amax(1)
    below = reconstruction_error(dae, images) <= config.mu
    assert below.any() and (~below).any()
    assert torch.all(moved[below] == 0), "images at or below mu get no gradient and no step"
    assert torch.all(moved[~below] > 0)
    assert torch.all(after[~below] < before[~below])


def test_noise_accumulates_and_is_fresh() -> None:
    dae, config, images = _dae_and_config()
    purifier = AdaptivePurifier(dae, config, noise=True)
    with torch.no_grad():
        first, second = purifier(images)[0], purifier(images)[0]
        quiet = AdaptivePurifier(dae, config, noise=False)(images)[0]
    assert not torch.allclose(first, second)
    # the noise is bounded: at most steps * epsilon * 4 per pixel away from the noise-free path (plus Adam drift)
    assert (first - quiet).abs().max() < config.steps * config.epsilon * 4 + 0.05


def test_reform_hands_the_classifier_the_reconstruction() -> None:
    dae, config, images = _dae_and_config()
    reformed = replace(config, reform=True)
    with torch.no_grad():
        shifted = AdaptivePurifier(dae, config, noise=False)(images)[0]
        purified, _, after = AdaptivePurifier(dae, reformed, noise=False)(images)
        assert torch.allclose(purified, dae(shifted).clamp(0.0, 1.0), atol=1e-6)
        assert torch.allclose(after, ((dae(purified).clamp(0.0, 1.0) - purified) ** 2).sum(dim=(1, 2, 3)))
    assert (purify_with_autograd(dae, images, reformed) - purified).abs().max() < 1e-5


def test_a_reformer_without_steps_classifies_the_reconstruction() -> None:
    dae, config, images = _dae_and_config()
    with torch.no_grad():
        purified, _, _ = AdaptivePurifier(dae, replace(config, steps=0, reform=True))(images)
        assert torch.equal(purified, dae(images).clamp(0.0, 1.0))
    with pytest.raises(ValueError, match="steps must be at least 1"):
        replace(config, steps=0)
