"""`infer`/`score` on the shipped bundle's real graphs: adaptive compute and per-image options."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from service.manifest import Manifest, PurifierSpec
from service.pipeline import infer, score
from service.runtime import ENGINES
from tests.conftest import bundle_dir


@pytest.fixture(scope="module")
def engines(shipped_manifest: Manifest) -> dict:
    return {
        role: ENGINES[role](bundle_dir() / graph.path, providers=["CPUExecutionProvider"])
        for role, graph in shipped_manifest.graphs.items()
    }


@pytest.fixture(scope="module")
def images(mnist_split) -> np.ndarray:
    """Clean digits (most at or below the clean mean error) and the same digits with noise (far above)."""
    clean = mnist_split.test.images[:12]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.3, clean.shape), 0, 1).astype(np.float32)
    return np.concatenate([clean, noisy])


def _infer(engines: dict, manifest: Manifest, images: np.ndarray, purify, skip_z):
    return infer(
        engines["ensemble"], engines["purifier"], manifest.purifier, images, 6, purify,
        screen=engines["screen"], skip_z=skip_z,
    )  # fmt: skip


def test_screen_is_the_purifiers_own_first_forward(engines, images) -> None:
    _, before, _ = engines["purifier"].run(images)
    assert np.allclose(engines["screen"].run(images), before, rtol=1e-6, atol=1e-6)


def test_adaptive_compute_skips_exactly_the_inputs_without_gradient(
    engines, shipped_manifest, images
) -> None:
    spec = shipped_manifest.purifier
    output = _infer(engines, shipped_manifest, images, True, skip_z=0.0)
    z = (output.error_before - spec.mu) / spec.sigma
    skipped = output.steps == 0
    assert skipped.any() and (~skipped).any()
    assert np.array_equal(skipped, z <= 0)
    assert np.array_equal(output.skipped, skipped)
    assert np.all(output.steps[~skipped] == spec.steps)
    assert np.array_equal(output.purified[skipped], images[skipped])
    assert np.array_equal(output.probabilities[skipped], output.raw_probabilities[skipped])
    assert np.array_equal(output.error_after[skipped], output.error_before[skipped])
    assert np.all(output.error_after[~skipped] < output.error_before[~skipped])
    result = score(output, spec)
    assert np.all(result.scores["purification_changed_label"][skipped] == 0)
    assert np.array_equal(result.purification.steps, output.steps)


def test_without_skipping_every_input_is_purified(engines, shipped_manifest, images) -> None:
    output = _infer(engines, shipped_manifest, images, True, skip_z=None)
    assert np.all(output.steps == shipped_manifest.purifier.steps)
    assert "screen" not in output.seconds


def test_a_reforming_purifier_skips_nothing(engines, shipped_manifest, images) -> None:
    """Its DAE changes even the images the APuDAE loss leaves alone, so the screen must not wave them on."""
    reforming = shipped_manifest.model_copy(
        update={"purifier": shipped_manifest.purifier.model_copy(update={"reform": True})}
    )
    output = _infer(engines, reforming, images, True, skip_z=0.0)
    assert np.all(output.steps == shipped_manifest.purifier.steps)
    assert not output.skipped.any()
    assert "screen" not in output.seconds


def test_only_a_reforming_purifier_may_run_no_steps(shipped_manifest) -> None:
    fields = shipped_manifest.purifier.model_dump()
    assert PurifierSpec.model_validate({**fields, "steps": 0, "reform": True}).steps == 0
    with pytest.raises(ValidationError, match="must reform"):
        PurifierSpec.model_validate({**fields, "steps": 0})


def test_purify_is_per_image_and_rows_split_back(engines, shipped_manifest, images) -> None:
    purify = np.arange(len(images)) % 2 == 0
    output = _infer(engines, shipped_manifest, images, purify, skip_z=0.0)
    assert np.all(np.isnan(output.error_before[~purify])) and np.all(output.steps[~purify] == 0)
    assert np.array_equal(output.probabilities[~purify], output.raw_probabilities[~purify])
    assert not np.isnan(output.error_before[purify]).any()
    part = output.take(slice(1, 2), samples=4)
    assert part.probabilities.shape == (1, 4, 10) and not part.purify.any()
    assert score(part, shipped_manifest.purifier).purification is None
    with pytest.raises(ValueError, match="one purify option"):
        score(output.take(slice(0, 2)), shipped_manifest.purifier)


def test_calls_split_at_max_rows_keep_every_image_in_its_place(
    engines, shipped_manifest, mnist_split
) -> None:
    """A batch split into several onnxruntime calls (max_rows) answers row for row as one call does."""
    digits, labels = mnist_split.test.images[:24], mnist_split.test.labels[:24]
    split = {
        role: ENGINES[role](bundle_dir() / graph.path, providers=["CPUExecutionProvider"], max_rows=50)
        for role, graph in shipped_manifest.graphs.items()
    }
    # the screen and the purifier's errors are deterministic: equal to the unsplit call's, in order
    assert np.array_equal(split["screen"].run(digits), engines["screen"].run(digits))
    purified, before, _ = split["purifier"].run(digits)
    assert purified.shape == digits.shape
    assert np.allclose(before, engines["purifier"].run(digits)[1], rtol=1e-6, atol=1e-6)
    # N = 25: two images per call, 12 calls; each image's passes stay its own (clean digits, right labels)
    passes = split["ensemble"].run(digits, 25)
    assert passes.shape == (24, 25, 10)
    assert (passes.mean(axis=1).argmax(axis=1) == labels).mean() >= 0.9
