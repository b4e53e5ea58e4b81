"""One defended forward pass, in two stages: `infer` (the graph calls) and `score` (numpy summaries).

`infer` runs at most one screen call, one purifier call and one ensemble call for a whole batch, whatever
mix of options the batch's images carry: the dynamic batcher merges requests with different `purify` and
`samples` into one call and then `score`s each request's rows on their own. Synchronous and transport-free,
so `export/` calibrates and measures bundles with exactly the code that serves them.

Adaptive compute: with a `screen` graph (one DAE forward) and `skip_z`, images whose reconstruction z-score
is at or below `skip_z` skip the T purification steps. With `skip_z = 0` these are exactly the images the
APuDAE loss gives no gradient (r <= mu); they lose only the small accumulated uniform noise of the fixed-T
pass, and they need no second ensemble pass on the raw input, since purification left them unchanged.
A purifier that reforms (`PurifierSpec.reform`: the classifier receives the DAE's reconstruction) changes
every image it sees, so with one nothing skips.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace

import numpy as np

from service.manifest import PurifierSpec
from service.runtime import DeviceRows, EnsembleEngine, PurifierEngine, ScreenEngine
from service.scoring import EnsembleSummary, purification_scores, summarize


@dataclass(frozen=True)
class EngineOutput:
    """What the engines computed for a batch, per image, before any summary."""

    probabilities: np.ndarray
    """[B,N,K] per-pass probabilities on what the classifier received."""
    raw_probabilities: np.ndarray
    """[B,N,K] on the raw input (equal to `probabilities` where nothing was purified)."""
    purified: np.ndarray
    """[B,C,H,W] what the classifier received."""
    error_before: np.ndarray
    """[B] reconstruction error of the input; NaN where purification was not asked for."""
    error_after: np.ndarray
    """[B] reconstruction error of `purified`; NaN where purification was not asked for."""
    purify: np.ndarray
    """[B] bool: purification was asked for."""
    steps: np.ndarray
    """[B] purification steps run: T, or 0 where not asked for or skipped by the screen (a purifier that
    only reforms has T = 0)."""
    skipped: np.ndarray
    """[B] bool: purification was asked for, and adaptive compute skipped the purifier graph."""
    seconds: dict[str, float] = field(default_factory=dict, compare=False)
    """Wall time per graph role."""

    def take(self, rows: slice, samples: int | None = None) -> EngineOutput:
        """These rows only, and only their first `samples` passes (the passes are i.i.d., so the first n of
        a larger draw are a draw of n)."""
        passes = slice(None, samples)
        return replace(
            self,
            probabilities=self.probabilities[rows, passes],
            raw_probabilities=self.raw_probabilities[rows, passes],
            **{name: getattr(self, name)[rows] for name in _PER_IMAGE},
        )


_PER_IMAGE = ("purified", "error_before", "error_after", "purify", "steps", "skipped")


@dataclass(frozen=True)
class Purification:
    purified: np.ndarray
    error_before: np.ndarray
    error_after: np.ndarray
    changed_label: np.ndarray
    steps: np.ndarray
    skipped: np.ndarray


@dataclass(frozen=True)
class PipelineResult:
    summary: EnsembleSummary
    """The ensemble's answer on what the classifier received (the purified input when purifying)."""
    scores: dict[str, np.ndarray]
    purification: Purification | None
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time per graph role."""


def infer(
    ensemble: EnsembleEngine,
    purifier: PurifierEngine | None,
    spec: PurifierSpec | None,
    images: np.ndarray,
    samples: int,
    purify: bool | np.ndarray,
    *,
    screen: ScreenEngine | None = None,
    skip_z: float | None = None,
) -> EngineOutput:
    """images [B,C,H,W] -> every engine output; `purify` is one flag or one per image."""
    batch = len(images)
    purify = np.broadcast_to(np.asarray(purify, dtype=bool), (batch,)).copy()
    if purify.any() and (purifier is None or spec is None):
        raise ValueError("purification asked for, but the model has no purifier")
    seconds: dict[str, float] = {}
    error_before = np.full(batch, np.nan, dtype=np.float32)
    error_after = error_before.copy()
    steps = np.zeros(batch, dtype=np.int64)
    run_purifier = purify.copy()
    if purify.any() and screen is not None and skip_z is not None and not spec.reform:
        started = time.perf_counter()
        screened = screen.run(images[purify])
        seconds["screen"] = time.perf_counter() - started
        error_before[purify] = error_after[purify] = screened
        run_purifier[purify] = (screened - spec.mu) / spec.sigma > skip_z
    to_purify = images[run_purifier]
    purification, passes = _purify_then_ensemble(
        ensemble, purifier if len(to_purify) else None, images, to_purify, samples, seconds
    )
    received = images
    if purification is not None:
        purified, error_before[run_purifier], error_after[run_purifier] = purification
        received = images.copy()
        received[run_purifier] = purified
        steps[run_purifier] = spec.steps
    raw = passes[:batch]
    final = raw.copy()
    final[run_purifier] = passes[batch:]
    skipped = purify & ~run_purifier
    return EngineOutput(final, raw, received, error_before, error_after, purify, steps, skipped, seconds)


Purified = tuple[np.ndarray, np.ndarray, np.ndarray]
"""The purifier's outputs for the images it ran on: purified images, error before, error after."""


def _purify_then_ensemble(
    ensemble: EnsembleEngine,
    purifier: PurifierEngine | None,
    images: np.ndarray,
    to_purify: np.ndarray,
    samples: int,
    seconds: dict[str, float],
) -> tuple[Purified | None, np.ndarray]:
    """Purifier (when given) on `to_purify`, then one ensemble call on `images` followed by the purified ones.

    With IO binding (CUDA) one device buffer [B+P] holds the raw images in its first B rows and the purifier
    writes the P purified ones straight into the rest, so the ensemble reads the whole buffer without the
    purified images going device -> host -> device between the graphs."""
    batch = len(images)
    buffer = None
    if ensemble.io_binding:
        host = np.empty((batch + len(to_purify), *images.shape[1:]), dtype=np.float32)
        host[:batch] = images  # the last P rows are overwritten on the device by the purifier
        buffer = ensemble.upload(host)
    purification = None
    if purifier is not None:
        started = time.perf_counter()
        if buffer is None:
            purification = purifier.run(to_purify)
        else:
            rows = DeviceRows(buffer, start=batch, count=len(to_purify))
            purification = purifier.run_on_device(purifier.upload(to_purify), rows)
        seconds["purifier"] = time.perf_counter() - started
    # NOTE: the raw input of the purified images rides along in the same ensemble call, so "purification
    # changed the label" costs no second call.
    started = time.perf_counter()
    if buffer is None:
        received = to_purify if purification is None else purification[0]
        passes = ensemble.run(np.concatenate([images, received]), samples)
    else:
        passes = ensemble.run_on_device(buffer, samples)
    seconds["ensemble"] = time.perf_counter() - started
    return purification, passes


def score(output: EngineOutput, spec: PurifierSpec | None) -> PipelineResult:
    """The ensemble's answer and every flag score for a batch whose images share one `purify` option."""
    summary = summarize(output.probabilities)
    if not output.purify.any():
        return PipelineResult(summary, summary.scores(), None, output.seconds)
    if not output.purify.all() or spec is None:
        raise ValueError("score() needs one purify option for the whole batch; take() the rows apart first")
    raw = summarize(output.raw_probabilities)
    changed = summary.class_index != raw.class_index
    purification = Purification(
        output.purified, output.error_before, output.error_after, changed, output.steps, output.skipped
    )
    scores = purification_scores(summary, raw, output.error_before, spec.mu, spec.sigma)
    return PipelineResult(summary, scores, purification, output.seconds)


def run_pipeline(
    ensemble: EnsembleEngine,
    purifier: PurifierEngine | None,
    spec: PurifierSpec | None,
    images: np.ndarray,
    samples: int,
    purify: bool,
    *,
    screen: ScreenEngine | None = None,
    skip_z: float | None = None,
) -> PipelineResult:
    """images [B,C,H,W] -> the ensemble's answer and every flag score, per image."""
    output = infer(ensemble, purifier, spec, images, samples, purify, screen=screen, skip_z=skip_z)
    return score(output, spec)


def run_pipeline_batched(
    ensemble: EnsembleEngine,
    purifier: PurifierEngine | None,
    spec: PurifierSpec | None,
    images: np.ndarray,
    samples: int,
    purify: bool = True,
    batch: int = 100,
    *,
    screen: ScreenEngine | None = None,
    skip_z: float | None = None,
) -> PipelineResult:
    """`run_pipeline` over many images in chunks, results concatenated (for calibration and evaluation)."""
    parts = [
        run_pipeline(
            ensemble, purifier, spec, images[i : i + batch], samples, purify, screen=screen, skip_z=skip_z
        )
        for i in range(0, len(images), batch)
    ]
    summaries = [p.summary for p in parts]
    summary = EnsembleSummary(
        **{
            f.name: np.concatenate([getattr(s, f.name) for s in summaries])
            for f in fields(EnsembleSummary)
            if f.name != "samples"
        },
        samples=samples,
    )
    scores = {key: np.concatenate([p.scores[key] for p in parts]) for key in parts[0].scores}
    purification = None
    if parts[0].purification is not None:
        purification = Purification(
            *(np.concatenate([getattr(p.purification, f.name) for p in parts]) for f in fields(Purification))
        )
    roles = set().union(*(p.seconds for p in parts))
    seconds = {key: sum(p.seconds.get(key, 0.0) for p in parts) for key in sorted(roles)}
    return PipelineResult(summary, scores, purification, seconds)
