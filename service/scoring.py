"""From per-pass probabilities to a prediction and the scores behind the "looks adversarial" flag.

Pure numpy and shared with `export/`, which calibrates the thresholds on exactly these scores: a score
computed one way at calibration and another way at serving time would make the calibrated false-positive
rate meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Every score is oriented so that larger is more suspicious.
DISAGREEMENT = "disagreement"
"""1 - share of the N noisy passes that vote for the ensemble's winner."""
ENTROPY = "entropy"
"""Predictive entropy (nats) of the mean ensemble probabilities."""
RECONSTRUCTION = "reconstruction"
"""z-score (r - mu) / sigma of the input's reconstruction error under the purifier's autoencoder."""
CHANGED_LABEL = "purification_changed_label"
"""1 when the ensemble's answer on the purified input differs from its answer on the raw input, else 0."""


@dataclass(frozen=True)
class EnsembleSummary:
    """Batch-wise statistics of one ensemble call; every array has the batch as its first axis."""

    mean_probabilities: np.ndarray
    class_index: np.ndarray
    confidence: np.ndarray
    agreement: np.ndarray
    entropy: np.ndarray
    samples: int

    def scores(self) -> dict[str, np.ndarray]:
        return {DISAGREEMENT: 1.0 - self.agreement, ENTROPY: self.entropy}


def summarize(probabilities: np.ndarray) -> EnsembleSummary:
    """probabilities [B, N, K] (softmax of each noisy pass) -> the ensemble's answer per image.

    RSE sums the N softmax vectors and takes the argmax; agreement counts the passes whose own argmax is
    that winner.
    """
    mean = probabilities.mean(axis=1)
    winner = mean.argmax(axis=1)
    votes = probabilities.argmax(axis=2)
    agreement = (votes == winner[:, None]).mean(axis=1)
    entropy = -(mean * np.log(np.clip(mean, 1e-12, 1.0))).sum(axis=1)
    return EnsembleSummary(
        mean_probabilities=mean,
        class_index=winner,
        confidence=mean[np.arange(len(winner)), winner],
        agreement=agreement,
        entropy=entropy,
        samples=probabilities.shape[1],
    )


def flag_reasons(scores: dict[str, np.ndarray], thresholds: dict[str, float]) -> list[list[str]]:
    """Per image, the names of the calibrated scores that exceed their threshold (empty: not flagged)."""
    batch = len(next(iter(scores.values())))
    fired = {name: scores[name] > threshold for name, threshold in thresholds.items() if name in scores}
    return [[name for name, mask in fired.items() if mask[i]] for i in range(batch)]


def purification_scores(
    purified: EnsembleSummary, raw: EnsembleSummary, error_before: np.ndarray, mu: float, sigma: float
) -> dict[str, np.ndarray]:
    """The ensemble's scores on the purified input, plus what purification itself reveals."""
    return {
        **purified.scores(),
        RECONSTRUCTION: (error_before - mu) / sigma,
        CHANGED_LABEL: (purified.class_index != raw.class_index).astype(np.float64),
    }
