"""The shipped default bundle, measured the way the service runs it: both graphs on onnxruntime, through
`service.pipeline`, on the held-out digits the recipe never trained or calibrated on."""

from __future__ import annotations

import numpy as np
import pytest

from export.calibrate import flagged
from service.manifest import Manifest
from service.pipeline import PipelineResult, run_pipeline_batched
from service.runtime import EnsembleEngine, PurifierEngine
from tests.conftest import bundle_dir

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def engines(shipped_manifest: Manifest) -> tuple[EnsembleEngine, PurifierEngine]:
    graphs = shipped_manifest.graphs
    return (
        EnsembleEngine(bundle_dir() / graphs["ensemble"].path, providers=CPU),
        PurifierEngine(bundle_dir() / graphs["purifier"].path, providers=CPU),
    )


def _run(engines, manifest: Manifest, images: np.ndarray) -> PipelineResult:
    ensemble, purifier = engines
    return run_pipeline_batched(ensemble, purifier, manifest.purifier, images, manifest.rse.default_samples)


@pytest.fixture(scope="module")
def clean(engines, shipped_manifest: Manifest, mnist_split) -> PipelineResult:
    assert len(mnist_split.test) == 1000
    return _run(engines, shipped_manifest, mnist_split.test.images)


def test_clean_accuracy_through_purifier_and_ensemble(clean, shipped_manifest, mnist_split) -> None:
    accuracy = float((clean.summary.class_index == mnist_split.test.labels).mean())
    assert accuracy >= 0.97
    # the recorded figure is reproducible up to the purifier's and the ensemble's randomness
    assert abs(accuracy - shipped_manifest.metrics.clean_accuracy) < 0.01


def test_clean_flag_rate_is_the_calibrated_target(clean, shipped_manifest) -> None:
    calibration = shipped_manifest.calibration
    assert set(calibration.thresholds) == {"reconstruction", "disagreement", "purification_changed_label"}
    rate = float(flagged(clean.scores, calibration.thresholds).mean())
    assert abs(rate - calibration.target_false_positive_rate) <= 0.03
    assert abs(rate - shipped_manifest.metrics.flag_rate_clean) < 0.02


def test_pgd_examples_are_flagged_far_more_often(clean, engines, shipped_manifest, mnist_split) -> None:
    """ART's PGD-L∞ (ε = 0.3) crafted on an undefended classifier trained here, replayed through the bundle."""
    from models.attacks import pgd_linf
    from models.rse import MNIST_SMALL, RSEClassifier
    from models.train import TrainConfig, train_classifier

    undefended = RSEClassifier(MNIST_SMALL, sigma_init=0.0, sigma_inner=0.0)
    train_classifier(undefended, mnist_split.train, TrainConfig(epochs=3, seed=1))
    test = mnist_split.test
    count = 200
    adversarial = pgd_linf(
        undefended, test.images[:count], test.labels[:count], epsilon=0.3, step_size=0.02, steps=20
    )
    attacked = _run(engines, shipped_manifest, adversarial)
    thresholds = shipped_manifest.calibration.thresholds
    clean_rate = float(flagged(clean.scores, thresholds).mean())
    attacked_rate = float(flagged(attacked.scores, thresholds).mean())
    assert attacked_rate >= 3 * clean_rate, (attacked_rate, clean_rate)


def test_purifier_graph_leaves_clean_digits_and_cleans_noisy_ones(engines, mnist_split) -> None:
    _, purifier = engines
    images = mnist_split.test.images[:100]
    purified, _, _ = purifier.run(images)
    assert np.abs(purified - images).mean() < 0.03
    noisy = np.clip(images + np.random.default_rng(0).normal(0, 0.2, images.shape), 0, 1).astype(np.float32)
    purified, before, after = purifier.run(noisy)
    assert (after < before).mean() >= 0.95
    assert np.abs(purified - images).mean() < np.abs(noisy - images).mean()
