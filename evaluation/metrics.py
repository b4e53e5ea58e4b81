"""The figures of one (attack, strength, system) cell, from per-image outcomes on clean and attacked inputs.

Definitions, as the report states them:
- accuracy: share of attacked images answered with the true label;
- attack success rate: share of the images the system answered correctly when clean that the attack turned
  into a wrong answer;
- flag rate on attacked images = the flag's true-positive rate at the calibrated false-positive rate (the
  clean flag rate, reported beside it);
- ROC AUC of each score and of the combined (binary) flag, clean images as negatives and their attacked
  versions as positives;
- defended-or-flagged: share of attacked images answered correctly or flagged (the attack failed on those);
- perturbation: mean L2 and L∞ norm of x_adv - x over the images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from evaluation.systems import Outcome


def auc(clean: np.ndarray, attacked: np.ndarray) -> float | None:
    """ROC AUC of a score separating attacked from clean inputs (None when undefined: no spread at all)."""
    values = np.concatenate([clean, attacked]).astype(np.float64)
    if not np.isfinite(values).all() or values.min() == values.max():
        return 0.5 if np.isfinite(values).all() else None
    truth = np.concatenate([np.zeros(len(clean)), np.ones(len(attacked))])
    return float(roc_auc_score(truth, values))


def perturbation_norms(images: np.ndarray, adversarial: np.ndarray) -> dict[str, float]:
    delta = (adversarial - images).reshape(len(images), -1).astype(np.float64)
    return {
        "mean_l2": float(np.linalg.norm(delta, axis=1).mean()),
        "mean_linf": float(np.abs(delta).max(axis=1).mean()),
    }


def cell_figures(labels: np.ndarray, clean: Outcome, attacked: Outcome) -> dict[str, Any]:
    correct = attacked.predictions == labels
    clean_correct = clean.predictions == labels
    figures: dict[str, Any] = {
        "images": len(labels),
        "accuracy": float(correct.mean()),
        "clean_accuracy": float(clean_correct.mean()),
        "attack_success_rate": float((~correct[clean_correct]).mean()) if clean_correct.any() else None,
    }
    if clean.scores:
        figures |= {
            "flag_rate": float(attacked.flagged.mean()),
            "clean_flag_rate": float(clean.flagged.mean()),
            "defended_or_flagged": float((correct | attacked.flagged).mean()),
            "auc": {name: auc(clean.scores[name], attacked.scores[name]) for name in sorted(clean.scores)}
            | {"combined_flag": auc(clean.flagged, attacked.flagged)},
        }
    return figures


def standard_error_gap(first: float, second: float, n_first: int, n_second: int) -> float:
    """Two standard errors of the difference of two accuracies, at least 2 points: the noise margin the
    sanity checks allow (the systems are random, and the image counts are small)."""
    variance = first * (1 - first) / max(n_first, 1) + second * (1 - second) / max(n_second, 1)
    return max(2.0 * float(np.sqrt(variance)), 0.02)
