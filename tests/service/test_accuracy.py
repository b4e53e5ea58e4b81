"""The shipped bundle, measured the way the service runs it: onnxruntime through the service's engine."""

from __future__ import annotations

import numpy as np

from service.manifest import Manifest
from service.runtime import EnsembleEngine
from service.scoring import summarize
from tests.conftest import bundle_dir


def test_shipped_bundle_accuracy_on_held_out_digits(shipped_manifest: Manifest, mnist_split) -> None:
    engine = EnsembleEngine(
        bundle_dir() / shipped_manifest.graphs["ensemble"].path, providers=["CPUExecutionProvider"]
    )
    test = mnist_split.test
    assert len(test) == 1000
    predicted = np.concatenate(
        [
            summarize(engine.run(test.images[i : i + 100], shipped_manifest.rse.default_samples)).class_index
            for i in range(0, len(test), 100)
        ]
    )
    accuracy = float((predicted == test.labels).mean())
    assert accuracy >= 0.97
    # the recorded figure is reproducible up to the ensemble's randomness
    assert abs(accuracy - shipped_manifest.metrics.clean_accuracy) < 0.01
