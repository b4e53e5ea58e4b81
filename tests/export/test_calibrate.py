from __future__ import annotations

import numpy as np

from export.calibrate import fit_thresholds, flagged


def test_thresholds_hit_the_target_rate_on_continuous_scores() -> None:
    rng = np.random.default_rng(0)
    scores = {"a": rng.normal(size=5000), "b": rng.exponential(size=5000)}
    thresholds = fit_thresholds(scores, target_fpr=0.05)
    rate = flagged(scores, thresholds).mean()
    assert 0.045 <= rate <= 0.05
    # both scores take part in the combined flag
    assert (scores["a"] > thresholds["a"]).any() and (scores["b"] > thresholds["b"]).any()


def test_discrete_score_with_ties_never_exceeds_the_target() -> None:
    rng = np.random.default_rng(1)
    disagreement = rng.choice([0.0, 0.1, 0.2], p=[0.9, 0.07, 0.03], size=2000)
    scores = {"disagreement": disagreement, "entropy": rng.exponential(size=2000)}
    thresholds = fit_thresholds(scores, target_fpr=0.05)
    assert flagged(scores, thresholds).mean() <= 0.05
    assert thresholds["disagreement"] >= 0.1  # flagging every dissent would exceed the target alone
