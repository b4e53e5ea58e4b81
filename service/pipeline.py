"""One defended forward pass: purify (one graph call), then the self-ensemble (one call), then scores.

Synchronous and transport-free, so the data plane runs it on its engine thread and `export/` calibrates and
measures bundles with exactly the code that serves them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from service.manifest import PurifierSpec
from service.runtime import EnsembleEngine, PurifierEngine
from service.scoring import EnsembleSummary, purification_scores, summarize


@dataclass(frozen=True)
class Purification:
    purified: np.ndarray
    error_before: np.ndarray
    error_after: np.ndarray
    changed_label: np.ndarray


@dataclass(frozen=True)
class PipelineResult:
    summary: EnsembleSummary
    """The ensemble's answer on what the classifier received (the purified input when purifying)."""
    scores: dict[str, np.ndarray]
    purification: Purification | None
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time per graph role."""


def run_pipeline(
    ensemble: EnsembleEngine,
    purifier: PurifierEngine | None,
    spec: PurifierSpec | None,
    images: np.ndarray,
    samples: int,
    purify: bool,
) -> PipelineResult:
    """images [B,C,H,W] -> the ensemble's answer and every flag score, per image."""
    if not purify or purifier is None or spec is None:
        started = time.perf_counter()
        summary = summarize(ensemble.run(images, samples))
        return PipelineResult(summary, summary.scores(), None, {"ensemble": time.perf_counter() - started})
    started = time.perf_counter()
    purified, before, after = purifier.run(images)
    purified_at = time.perf_counter()
    # NOTE: the raw input rides along in the same ensemble call (2·B·N rows) so that "purification changed
    # the label" costs no second call.
    probabilities = ensemble.run(np.concatenate([purified, images]), samples)
    done = time.perf_counter()
    batch = len(images)
    on_purified, on_raw = summarize(probabilities[:batch]), summarize(probabilities[batch:])
    scores = purification_scores(on_purified, on_raw, before, spec.mu, spec.sigma)
    purification = Purification(purified, before, after, on_purified.class_index != on_raw.class_index)
    seconds = {"purifier": purified_at - started, "ensemble": done - purified_at}
    return PipelineResult(on_purified, scores, purification, seconds)


def run_pipeline_batched(
    ensemble: EnsembleEngine,
    purifier: PurifierEngine | None,
    spec: PurifierSpec | None,
    images: np.ndarray,
    samples: int,
    purify: bool = True,
    batch: int = 100,
) -> PipelineResult:
    """`run_pipeline` over many images in chunks, results concatenated (for calibration and evaluation)."""
    parts = [
        run_pipeline(ensemble, purifier, spec, images[i : i + batch], samples, purify)
        for i in range(0, len(images), batch)
    ]
    summaries = [p.summary for p in parts]
    summary = EnsembleSummary(
        mean_probabilities=np.concatenate([s.mean_probabilities for s in summaries]),
        class_index=np.concatenate([s.class_index for s in summaries]),
        confidence=np.concatenate([s.confidence for s in summaries]),
        agreement=np.concatenate([s.agreement for s in summaries]),
        entropy=np.concatenate([s.entropy for s in summaries]),
        samples=samples,
    )
    scores = {key: np.concatenate([p.scores[key] for p in parts]) for key in parts[0].scores}
    purification = None
    if parts[0].purification is not None:
        purification = Purification(
            *(
                np.concatenate([getattr(p.purification, f) for p in parts])
                for f in Purification.__dataclass_fields__
            )
        )
    return PipelineResult(summary, scores, purification)
