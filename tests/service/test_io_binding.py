"""The IO-binding path of `infer` (used on CUDA, forced here on CPU) against the plain numpy path: with the
same noise seed both must give the same answer, so the purified rows land where the ensemble reads them."""

from __future__ import annotations

import numpy as np
import pytest

from service.pipeline import EngineOutput
from service.registry import LoadedModel, LoadOptions, load_bundle
from tests.conftest import bundle_dir

SEED = 1234


def _model(io_binding: bool) -> LoadedModel:
    options = LoadOptions(
        ["CPUExecutionProvider"],
        intra_op_threads=1,
        seed=SEED,
        warmup=False,
        skip_z=0.0,
        io_binding=io_binding,
    )
    return load_bundle(bundle_dir(), options)


@pytest.fixture(scope="module")
def outputs(mnist_split) -> tuple[EngineOutput, EngineOutput]:
    """One batch through both paths: clean digits (mostly skipped by the screen), noisy digits (purified),
    and images that did not ask for purification at all."""
    clean = mnist_split.test.images[:8]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.3, clean.shape), 0, 1).astype(np.float32)
    images = np.concatenate([clean, noisy, clean[:4]])
    purify = np.arange(len(images)) < 16
    plain, bound = _model(io_binding=False), _model(io_binding=True)
    assert not plain.engine.io_binding and bound.engine.io_binding
    return plain.infer(images, 6, purify), bound.infer(images, 6, purify)


def test_the_batch_mixes_purified_skipped_and_unasked_images(outputs) -> None:
    plain, _ = outputs
    purified = plain.steps > 0
    assert purified.any() and (plain.purify & ~purified).any() and (~plain.purify).any()


@pytest.mark.parametrize(
    "field", ["probabilities", "raw_probabilities", "purified", "error_before", "error_after", "steps"]
)
def test_bound_and_plain_paths_agree(outputs, field: str) -> None:
    plain, bound = outputs
    np.testing.assert_allclose(getattr(bound, field), getattr(plain, field), rtol=1e-5, atol=1e-6)
