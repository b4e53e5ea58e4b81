from __future__ import annotations

import torch
from torch import nn

from models.rse import (
    MNIST_SMALL,
    GaussianNoise,
    RSEClassifier,
    ensemble_probabilities,
    noise_disabled,
    without_noise,
)


def test_noise_sits_before_every_convolution_and_not_before_linear() -> None:
    model = RSEClassifier(MNIST_SMALL, sigma_init=0.2, sigma_inner=0.1)
    noise_since_last_conv: list[float] = []
    for layer in model.features:
        if isinstance(layer, GaussianNoise):
            noise_since_last_conv.append(layer.sigma)
        elif isinstance(layer, nn.Conv2d):
            assert len(noise_since_last_conv) == 1, "every conv gets exactly one noise layer in front"
            noise_since_last_conv = []
    sigmas = [layer.sigma for layer in model.modules() if isinstance(layer, GaussianNoise)]
    assert sigmas == [0.2, 0.1, 0.1, 0.1]
    assert not any(isinstance(layer, GaussianNoise) for layer in model.head)


def test_noise_is_on_in_eval_mode_and_off_when_disabled() -> None:
    model = RSEClassifier(MNIST_SMALL, sigma_init=0.2, sigma_inner=0.1).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))
        with noise_disabled(model):
            assert torch.equal(model(x), model(x))
    assert all(layer.enabled for layer in model.modules() if isinstance(layer, GaussianNoise))


def test_without_noise_is_a_deterministic_copy_and_leaves_the_original_noisy() -> None:
    model = RSEClassifier(MNIST_SMALL, sigma_init=0.2, sigma_inner=0.1).eval()
    plain = without_noise(model)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        with noise_disabled(model):
            expected = model(x)
        assert torch.equal(plain(x), expected)
        assert not torch.allclose(model(x), model(x))
    assert not plain.training


def test_ensemble_probabilities_shape_and_normalisation() -> None:
    model = RSEClassifier(MNIST_SMALL, sigma_init=0.2, sigma_inner=0.1).eval()
    probabilities = ensemble_probabilities(model, torch.rand(3, 1, 28, 28), samples=5)
    assert probabilities.shape == (3, 5, 10)
    assert torch.allclose(probabilities.sum(-1), torch.ones(3, 5), atol=1e-5)
    # passes of one image differ: each row drew its own noise
    assert not torch.allclose(probabilities[0, 0], probabilities[0, 1])
