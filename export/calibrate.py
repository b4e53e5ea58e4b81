"""Fit the "looks adversarial" thresholds on clean held-out images, and measure a bundle through the engine.

Recipes measure bundles with `service.pipeline.run_pipeline_batched` and score them with this module, so the
numbers written into the manifest are the numbers the service will reproduce.
"""

from __future__ import annotations

import numpy as np

from service.scoring import flag_reasons


def flagged(scores: dict[str, np.ndarray], thresholds: dict[str, float]) -> np.ndarray:
    """Boolean per image: does any calibrated score exceed its threshold?"""
    return np.array([bool(reasons) for reasons in flag_reasons(scores, thresholds)])


def fit_thresholds(scores: dict[str, np.ndarray], target_fpr: float, grid: int = 400) -> dict[str, float]:
    """Per-score thresholds whose combined (any-score) flag rate on these clean scores is at most `target_fpr`.

    Every score is cut at the same upper quantile 1 - q; q is the largest value on a fine grid that keeps
    the combined rate within the target. A shared q keeps any one score from dominating, and searching on
    the combined rate accounts for the scores' overlap.
    """
    best = {name: float(values.max()) for name, values in scores.items()}
    for q in np.linspace(target_fpr, 0.0, grid):
        thresholds = {name: float(np.quantile(values, 1.0 - q)) for name, values in scores.items()}
        if flagged(scores, thresholds).mean() <= target_fpr:
            best = thresholds
            break
    return best
