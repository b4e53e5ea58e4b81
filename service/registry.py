"""Bundles on disk -> loaded, verified, warmed-up models by name and version, kept in step with the disk.

`sync()` reconciles the served set with the repository under the version policy: it loads new versions,
reloads changed ones and drops removed ones. A bundle that fails (bad manifest, hash mismatch, graph I/O not
as declared, warm-up error) is logged, remembered with its reason and left out, and whatever served before
keeps serving; it is retried once its files change.

NOTE on swapping: the served set is one dict, rebuilt and replaced whole under a writer lock, so a reader
sees the old set or the new one, never a mix. Nothing is ever closed: a request that already holds a
`LoadedModel` finishes on it, and its sessions are freed when the last such reference goes (the old version
*drains*); a finalizer logs that moment.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from service.errors import Conflict, LoadFailed, ModelNotFound
from service.manifest import FP16_ENSEMBLE, GraphFile, Manifest, ManifestError, load_manifest
from service.metrics import ServiceMetrics
from service.pipeline import EngineOutput, PipelineResult, infer, score
from service.repository import Fingerprint, VersionPolicy, by_version, fingerprint, scan
from service.runtime import ENGINES, EnsembleEngine, GraphEngine, PurifierEngine, ScreenEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    manifest: Manifest
    path: Path
    engines: dict[str, GraphEngine]
    skip_z: float | None = None
    """Adaptive compute: skip purification when the screen's reconstruction z-score is at or below this."""
    precision: str = "fp32"
    """Which ensemble graph answers: `fp32` (`ensemble`) or `fp16` (`ensemble_fp16`)."""

    @property
    def engine(self) -> EnsembleEngine:
        engine = self.engines["ensemble"]
        assert isinstance(engine, EnsembleEngine)
        return engine

    @property
    def purifier(self) -> PurifierEngine | None:
        engine = self.engines.get("purifier")
        assert engine is None or isinstance(engine, PurifierEngine)
        return engine

    @property
    def screen(self) -> ScreenEngine | None:
        engine = self.engines.get("screen")
        assert engine is None or isinstance(engine, ScreenEngine)
        return engine

    def infer(
        self, images: np.ndarray, samples: int, purify: bool | np.ndarray, skip_z: float | None = None
    ) -> EngineOutput:
        """`skip_z` overrides the model's own (warm-up uses -inf so that every graph runs)."""
        return infer(
            self.engine,
            self.purifier,
            self.manifest.purifier,
            images,
            samples,
            purify,
            screen=self.screen,
            skip_z=self.skip_z if skip_z is None else skip_z,
        )

    def run(self, images: np.ndarray, samples: int, purify: bool) -> PipelineResult:
        return score(self.infer(images, samples, purify), self.manifest.purifier)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version


@dataclass(frozen=True)
class LoadOptions:
    """How bundles become sessions; the same for every bundle of one service."""

    providers: list[str]
    intra_op_threads: int = 0
    seed: int | None = None
    warmup: bool = True
    skip_z: float | None = None
    """Adaptive compute threshold given to every loaded model (see `LoadedModel.skip_z`)."""
    max_rows: int = 0
    """Graph rows per onnxruntime call on CPU (see `GraphEngine._run`); 0: no limit."""
    precision: Literal["fp32", "fp16"] = "fp32"
    """Which ensemble graph is served: `ensemble`, or `ensemble_fp16` where the bundle has one."""
    io_binding: bool | None = None
    """Keep a batch on the device between the graphs (see `GraphEngine.io_binding`); None: on for CUDA."""


@dataclass(frozen=True)
class IndexEntry:
    """One version found on disk or serving, in the states of Triton's repository index."""

    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str


def served_graphs(manifest: Manifest, precision: str, bundle_dir: Path) -> tuple[dict[str, GraphFile], str]:
    """The graph behind each engine role, and the precision the ensemble is served at: the fp16 ensemble in
    place of the float32 one when asked for and present; the other one is not loaded at all."""
    graphs = {role: graph for role, graph in manifest.graphs.items() if role != FP16_ENSEMBLE}
    if precision != "fp16":
        return graphs, "fp32"
    if FP16_ENSEMBLE not in manifest.graphs:
        log.warning("%s has no %s graph; serving the float32 ensemble", bundle_dir, FP16_ENSEMBLE)
        return graphs, "fp32"
    return {**graphs, "ensemble": manifest.graphs[FP16_ENSEMBLE]}, "fp16"


def load_bundle(bundle_dir: Path, options: LoadOptions) -> LoadedModel:
    manifest = load_manifest(bundle_dir, verify=True)
    if (bundle_dir.parent.name, bundle_dir.name) != (manifest.name, manifest.version):
        raise ManifestError(
            f"{bundle_dir}: manifest says {manifest.name}/{manifest.version}, the folder "
            f"{bundle_dir.parent.name}/{bundle_dir.name}"
        )
    engines: dict[str, GraphEngine] = {}
    served, precision = served_graphs(manifest, options.precision, bundle_dir)
    for role, graph in served.items():
        engine = ENGINES[role](
            bundle_dir / graph.path,
            providers=options.providers,
            intra_op_threads=options.intra_op_threads,
            seed=options.seed,
            max_rows=options.max_rows,
            io_binding=options.io_binding,
        )
        inputs, outputs = engine.io_names()
        if inputs != graph.inputs or outputs != graph.outputs:
            raise ManifestError(
                f"{bundle_dir}: graph '{role}' I/O {inputs} -> {outputs} differs from the manifest's "
                f"{graph.inputs} -> {graph.outputs}"
            )
        engines[role] = engine
    model = LoadedModel(
        manifest=manifest, path=bundle_dir, engines=engines, skip_z=options.skip_z, precision=precision
    )
    if options.warmup:
        probe = np.zeros((1, *manifest.input.shape), dtype=np.float32)
        started = time.perf_counter()
        try:
            # skip_z = -inf: every graph runs once, the purifier included
            model.infer(probe, manifest.rse.default_samples, model.purifier is not None, skip_z=-np.inf)
        except Exception as exc:  # onnxruntime raises its own types; the message is what the operator needs
            raise ManifestError(f"{bundle_dir}: warm-up run failed: {exc}") from exc
        log.info("warmed up %s/%s in %.3fs", manifest.name, manifest.version, time.perf_counter() - started)
    return model


class ModelRegistry:
    """The served models, by name and version. Readers never block; writers (`sync`, `load`, `unload`)
    take turns, and each publishes its result in one assignment."""

    def __init__(
        self,
        repository: Path,
        options: LoadOptions,
        policy: VersionPolicy | None = None,
        *,
        protected: Iterable[str] = (),
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.repository = repository
        self.options = options
        self.policy = policy or VersionPolicy()
        self.protected = frozenset(protected)
        """Names that keep serving what they have when their folder vanishes, and cannot be unloaded."""
        self.metrics = metrics
        self._served: dict[str, dict[str, LoadedModel]] = {}
        """name -> version -> model, highest version first; replaced whole, never mutated."""
        self._stamps: dict[tuple[str, str], Fingerprint] = {}
        self._failures: dict[tuple[str, str], tuple[Fingerprint, str]] = {}
        """(name, version) -> (files it was tried with, why it failed); replaced whole, like `_served`."""
        self._unloaded: set[str] = set()
        self._lock = threading.Lock()

    # --- readers ------------------------------------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The model serving `name` at `version`, or at its highest served version."""
        versions = self._served.get(name)
        if not versions:
            known = ", ".join(self._served) or "none"
            raise ModelNotFound(f"model '{name}' is not served (available: {known})", model=name)
        if version is None:
            return next(iter(versions.values()))
        try:
            return versions[version]
        except KeyError:
            raise ModelNotFound(
                f"model '{name}' has no version '{version}' serving (serving: {', '.join(versions)})",
                model=name,
                version=version,
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._served

    def names(self) -> list[str]:
        return sorted(self._served)

    def versions(self, name: str) -> list[str]:
        """Served versions of `name`, highest first."""
        return list(self._served.get(name, {}))

    def models(self) -> list[LoadedModel]:
        served = self._served
        return [model for name in sorted(served) for model in served[name].values()]

    @property
    def failures(self) -> dict[str, str]:
        """`name/version` -> why that bundle is not served."""
        return {
            f"{name}/{version}": reason for (name, version), (_, reason) in sorted(self._failures.items())
        }

    def failure_reason(self, name: str) -> str | None:
        reasons = [reason for (n, _), (_, reason) in sorted(self._failures.items()) if n == name]
        return "; ".join(reasons) or None

    def index(self) -> list[IndexEntry]:
        """Every version on disk or serving, with its state and, when unavailable, why."""
        served, on_disk = self._served, scan(self.repository)
        entries = []
        for name in sorted(set(served) | set(on_disk)):
            serving = served.get(name, {})
            for version in by_version({**on_disk.get(name, {}), **serving}):
                failure = self._failures.get((name, version))
                if version in serving:
                    state, reason = "READY", ""
                elif name in self._unloaded:
                    state, reason = "UNAVAILABLE", "unloaded"
                elif failure is not None:
                    state, reason = "UNAVAILABLE", failure[1]
                else:
                    state, reason = "UNAVAILABLE", f"not selected: serving {self.policy.describe(name)}"
                entries.append(IndexEntry(name, version, state, reason))
        return entries

    # --- writers ------------------------------------------------------------------------------------------
    def sync(self) -> None:
        """Bring the served set in line with the disk: new versions in, changed ones reloaded, removed out."""
        with self._lock:
            on_disk = scan(self.repository)
            self._failures = {
                key: failure for key, failure in self._failures.items() if key[1] in on_disk.get(key[0], {})
            }
            names = (set(on_disk) | set(self._served)) - self._unloaded
            self._publish(
                {name: self._reconcile(name, on_disk.get(name, {}), force=False)[0] for name in names}
            )

    def load(self, name: str) -> None:
        """Load `name`, or reload it from disk with fresh sessions if it is serving (Triton's semantics)."""
        with self._lock:
            on_disk = scan(self.repository).get(name)
            if not on_disk:
                raise ModelNotFound(f"no bundle named '{name}' in {self.repository}", model=name)
            self._unloaded.discard(name)
            kept, errors = self._reconcile(name, on_disk, force=True)
            self._publish({name: kept})
        if errors:
            serving = f"serving version(s) {', '.join(kept)}" if kept else "not serving"
            raise LoadFailed(f"{'; '.join(errors)} ({name} is {serving})", model=name)

    def unload(self, name: str) -> None:
        """Stop serving every version of `name` until `load` (polling leaves it alone meanwhile)."""
        with self._lock:
            if name in self.protected:
                raise Conflict(f"model '{name}' is the default model; it can be reloaded but not unloaded")
            if name not in self._served and name not in scan(self.repository):
                raise ModelNotFound(f"model '{name}' is neither serving nor in the repository", model=name)
            self._unloaded.add(name)
            self._publish({name: {}})

    def _reconcile(
        self, name: str, on_disk: dict[str, Path], force: bool
    ) -> tuple[dict[str, LoadedModel], list[str]]:
        """The versions of `name` to serve next, highest first, and the load errors met on the way.

        Walks the policy's candidates from the highest: an unchanged served version is kept as is; a new or
        changed one is loaded, and if that fails the version it would have replaced (if any) keeps serving
        and the walk goes on to older versions. `force` reloads even unchanged versions.
        """
        current = self._served.get(name, {})
        limit = self.policy.limit(name)
        kept: dict[str, LoadedModel] = {}
        errors: list[str] = []
        for version in self.policy.candidates(name, on_disk):
            if limit is not None and len(kept) >= limit:
                break
            stamp, old = fingerprint(on_disk[version]), current.get(version)
            failure = self._failures.get((name, version))
            if not force and old is not None and self._stamps.get((name, version)) == stamp:
                kept[version] = old
            elif not force and failure is not None and failure[0] == stamp:
                if old is not None:
                    kept[version] = old
            elif (model := self._load(name, version, on_disk[version], stamp)) is not None:
                kept[version] = model
            else:
                errors.append(f"{name}/{version}: {self._failures[(name, version)][1]}")
                if old is not None:
                    kept[version] = old
        if not kept and current and name in self.protected:
            log.warning("%s has no loadable version on disk; it keeps serving %s", name, ", ".join(current))
            kept = dict(current)
        return kept, errors

    def _load(self, name: str, version: str, folder: Path, stamp: Fingerprint) -> LoadedModel | None:
        try:
            model = load_bundle(folder, self.options)
        # NOTE: deliberately broad: whatever a bundle does wrong (onnxruntime raises its own types), the
        # models already serving must keep serving.
        except Exception as exc:
            log.error("not serving %s/%s: %s", name, version, exc)
            self._failures = {**self._failures, (name, version): (stamp, str(exc))}
            self._count(name, version, "failed")
            return None
        self._failures = {key: failure for key, failure in self._failures.items() if key != (name, version)}
        self._stamps[(name, version)] = stamp
        log.info(
            "loaded %s/%s from %s on %s (%s)", name, version, folder, model.engine.provider, model.precision
        )
        self._count(name, version, "loaded")
        if self.metrics is not None:
            self.metrics.model_info.labels(
                name, version, model.engine.provider, str(model.manifest.rse.default_samples)
            ).set(1)
            self.metrics.flag_rate_baseline.labels(name, version).set(model.manifest.metrics.flag_rate_clean)
        return model

    def _publish(self, changes: dict[str, dict[str, LoadedModel]]) -> None:
        """Swap in the new versions of the changed names in one assignment, then retire what they replace."""
        served = {name: versions for name, versions in self._served.items() if name not in changes}
        served.update({name: versions for name, versions in changes.items() if versions})
        previous, self._served = self._served, served
        for name in changes:
            for version, old in previous.get(name, {}).items():
                new = served.get(name, {}).get(version)
                if new is not old:
                    self._retire(old, replaced=new is not None)

    def _retire(self, model: LoadedModel, *, replaced: bool) -> None:
        name, version = model.name, model.version
        log.info(
            "%s %s/%s; requests already running on it finish there",
            "replaced" if replaced else "unloaded",
            name,
            version,
        )
        released = weakref.finalize(
            model, log.info, "released %s/%s: its last request has finished", name, version
        )
        released.atexit = False  # at exit nothing drains; the message would mislead
        self._count(name, version, "replaced" if replaced else "unloaded")
        if not replaced:
            self._stamps.pop((name, version), None)
            if self.metrics is not None:
                self.metrics.model_info.remove(
                    name, version, model.engine.provider, str(model.manifest.rse.default_samples)
                )
                self.metrics.flag_rate_baseline.remove(name, version)

    def _count(self, name: str, version: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.model_loads.labels(name, version, outcome).inc()


async def poll(registry: ModelRegistry, interval: float) -> None:
    """Keep the served set in step with the disk every `interval` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(registry.sync)
        except Exception:  # a scan error (say, a folder vanishing mid-listing) must not end the polling
            log.exception("repository scan of %s failed; serving what was loaded", registry.repository)
