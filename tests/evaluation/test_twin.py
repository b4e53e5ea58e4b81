"""The torch twin against the shipped bundle's ONNX graphs: the adaptive attacks are only as good as this."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from evaluation.recipes import MNIST
from evaluation.systems import ExpectationOverNoise, ReformingStraightThrough, StraightThroughPurifier
from evaluation.twin import (
    check_parity,
    graph_noise_scales,
    load_graph_weights,
    load_twin,
    onnx_weights,
    pin_random_ops,
    twin_noise_scales,
)
from models.rse import MNIST_SMALL, Architecture, RSEClassifier
from service.runtime import EnsembleEngine, PurifierEngine
from tests.conftest import bundle_dir

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def twin():
    return load_twin(bundle_dir(), MNIST)


def test_twin_matches_both_graphs_with_the_noise_pinned(twin, mnist_split) -> None:
    parity = check_parity(twin, mnist_split.test.images[:32])
    assert parity["ensemble_max_abs_diff"] < 1e-5
    # Adam's sign-like steps on ~0 gradients make a few pixels differ by rounding; the image as a whole does not
    assert parity["purifier_mean_abs_diff"] < 1e-4
    assert parity["purifier_error_max_rel_diff"] < 1e-2


def test_graph_noise_scales_are_the_twins_sigmas(twin, shipped_manifest) -> None:
    path = bundle_dir() / shipped_manifest.graphs["ensemble"].path
    scales = graph_noise_scales(path)
    assert sorted(scales) == pytest.approx(sorted(twin_noise_scales(twin.classifier)))
    assert max(scales) == pytest.approx(shipped_manifest.rse.sigma_init)
    assert min(scales) == pytest.approx(shipped_manifest.rse.sigma_inner)


def test_pinned_graphs_are_deterministic_and_the_served_ones_are_not(tmp_path: Path, mnist_split) -> None:
    images = mnist_split.test.images[:4]
    for role, engine_type in (("ensemble", EnsembleEngine), ("purifier", PurifierEngine)):
        source = bundle_dir() / f"{role}.onnx"
        pinned = engine_type(pin_random_ops(source, tmp_path / f"{role}.onnx"), providers=CPU)
        served = engine_type(source, providers=CPU)
        run = (lambda e: e.run(images, 4)[:, 1:]) if role == "ensemble" else (lambda e: e.run(images)[0])
        assert np.array_equal(run(pinned), run(pinned))
        assert not np.array_equal(run(served), run(served))
        ops = {node.op_type for node in onnx.load(str(tmp_path / f"{role}.onnx")).graph.node}
        assert not any(op.startswith("Random") for op in ops)


def test_weights_that_do_not_fit_are_refused(shipped_manifest) -> None:
    weights = onnx_weights(bundle_dir() / shipped_manifest.graphs["ensemble"].path)
    wider = Architecture(**{**MNIST_SMALL.__dict__, "hidden": (256,)})
    with pytest.raises(ValueError, match="shape"):
        load_graph_weights(RSEClassifier(wider, 0.2, 0.1), weights, "classifier.")
    with pytest.raises(ValueError, match="no initializers"):
        load_graph_weights(RSEClassifier(MNIST_SMALL, 0.2, 0.1), weights, "model.")


def test_straight_through_purifier_runs_the_graph_forward_and_passes_gradients(mnist_split) -> None:
    engine = PurifierEngine(bundle_dir() / "purifier.onnx", providers=CPU, seed=0)
    noisy = np.clip(mnist_split.test.images[:3] + 0.3, 0, 1).astype(np.float32)
    x = torch.from_numpy(noisy).requires_grad_(True)
    purified = StraightThroughPurifier(engine)(x)
    assert np.abs(purified.detach().numpy() - noisy).max() > 1e-3, "noisy digits must get purified"
    weights = torch.randn_like(x)
    (purified * weights).sum().backward()
    assert torch.equal(x.grad, weights)


def test_reforming_straight_through_serves_the_graph_and_differentiates_the_dae(mnist_split) -> None:
    twin = load_twin(bundle_dir(), MNIST)
    assert twin.purifier is not None
    engine = PurifierEngine(bundle_dir() / "purifier.onnx", providers=CPU, seed=0)
    noisy = np.clip(mnist_split.test.images[:3] + 0.3, 0, 1).astype(np.float32)
    x = torch.from_numpy(noisy).requires_grad_(True)
    output = ReformingStraightThrough(engine, twin.purifier.dae)(x)
    reference = PurifierEngine(bundle_dir() / "purifier.onnx", providers=CPU, seed=0).run(noisy)[0]
    assert np.array_equal(output.detach().numpy(), reference), "the forward value is the served graph's"
    weights = torch.randn_like(x)
    (output * weights).sum().backward()
    expected = torch.autograd.grad((twin.purifier.dae(x).clamp(0.0, 1.0) * weights).sum(), x)[0]
    assert torch.allclose(x.grad, expected) and not torch.allclose(x.grad, weights)


def test_expectation_over_noise_is_the_log_of_the_mean_softmax() -> None:
    torch.manual_seed(0)
    model = RSEClassifier(MNIST_SMALL, sigma_init=0.3, sigma_inner=0.1).eval()
    x = torch.rand(2, 1, 28, 28)
    torch.manual_seed(1)
    averaged = ExpectationOverNoise(model, samples=5)(x)
    torch.manual_seed(1)
    passes = torch.softmax(model(x.repeat_interleave(5, dim=0)), dim=-1).view(2, 5, -1)
    assert torch.allclose(averaged, passes.mean(dim=1).log(), atol=1e-5)
    assert torch.allclose(averaged.exp().sum(dim=1), torch.ones(2), atol=1e-5)


def test_expectation_over_a_mirrored_ensemble_sees_both_views_as_the_graph_does() -> None:
    """Odd draws classify the flipped image, so an attack's gradient is the served ensemble's, both views."""
    torch.manual_seed(0)
    model = RSEClassifier(MNIST_SMALL, sigma_init=0.3, sigma_inner=0.1).eval()
    x = torch.rand(2, 1, 28, 28)
    torch.manual_seed(1)
    averaged = ExpectationOverNoise(model, samples=4, mirrored=True)(x)
    torch.manual_seed(1)
    rows = torch.stack([x, x.flip(-1)] * 2, dim=1).reshape(8, 1, 28, 28)
    passes = torch.softmax(model(rows), dim=-1).view(2, 4, -1)
    assert torch.allclose(averaged, passes.mean(dim=1).log(), atol=1e-5)
    torch.manual_seed(1)
    assert not torch.allclose(averaged, ExpectationOverNoise(model, samples=4)(x), atol=1e-3)
