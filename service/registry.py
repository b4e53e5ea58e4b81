"""Bundles on disk -> loaded, verified, warmed-up models, by name.

The repository holds `<name>/<version>/manifest.json`; the highest numeric version of each name is served.
A bundle that fails to load (bad manifest, hash mismatch, graph I/O not as declared) is logged and left out,
so one broken bundle never takes the others down.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.errors import ModelNotFound
from service.manifest import MANIFEST_FILENAME, Manifest, ManifestError, load_manifest
from service.pipeline import EngineOutput, PipelineResult, infer, score
from service.runtime import ENGINES, EnsembleEngine, GraphEngine, PurifierEngine, ScreenEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    manifest: Manifest
    path: Path
    engines: dict[str, GraphEngine]
    skip_z: float | None = None
    """Adaptive compute: skip purification when the screen's reconstruction z-score is at or below this."""

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


def latest_versions(repository: Path) -> dict[str, Path]:
    """name -> folder of its highest numeric version that has a manifest."""
    found: dict[str, Path] = {}
    if not repository.is_dir():
        return found
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = [v for v in model_dir.iterdir() if v.name.isdigit() and (v / MANIFEST_FILENAME).is_file()]
        if versions:
            found[model_dir.name] = max(versions, key=lambda v: int(v.name))
    return found


def load_bundle(
    bundle_dir: Path,
    *,
    providers: list[str],
    intra_op_threads: int,
    seed: int | None,
    warmup: bool,
    skip_z: float | None = None,
) -> LoadedModel:
    manifest = load_manifest(bundle_dir, verify=True)
    engines: dict[str, GraphEngine] = {}
    for role, graph in manifest.graphs.items():
        engine = ENGINES[role](
            bundle_dir / graph.path, providers=providers, intra_op_threads=intra_op_threads, seed=seed
        )
        inputs, outputs = engine.io_names()
        if inputs != graph.inputs or outputs != graph.outputs:
            raise ManifestError(
                f"{bundle_dir}: graph '{role}' I/O {inputs} -> {outputs} differs from the manifest's "
                f"{graph.inputs} -> {graph.outputs}"
            )
        engines[role] = engine
    model = LoadedModel(manifest=manifest, path=bundle_dir, engines=engines, skip_z=skip_z)
    if warmup:
        probe = np.zeros((1, *manifest.input.shape), dtype=np.float32)
        started = time.perf_counter()
        model.infer(probe, manifest.rse.default_samples, purify=model.purifier is not None, skip_z=-np.inf)
        log.info("warmed up %s/%s in %.3fs", manifest.name, manifest.version, time.perf_counter() - started)
    return model


class ModelRegistry:
    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}
        self.failures: dict[str, str] = {}

    def load_repository(
        self,
        repository: Path,
        *,
        providers: list[str],
        intra_op_threads: int,
        seed: int | None,
        warmup: bool,
        skip_z: float | None = None,
    ) -> None:
        for name, bundle_dir in latest_versions(repository).items():
            try:
                model = load_bundle(
                    bundle_dir,
                    providers=providers,
                    intra_op_threads=intra_op_threads,
                    seed=seed,
                    warmup=warmup,
                    skip_z=skip_z,
                )
            except (ManifestError, OSError, RuntimeError, ValueError) as exc:
                log.error("not serving %s: %s", bundle_dir, exc)
                self.failures[name] = str(exc)
                continue
            if model.name != name:
                log.error("not serving %s: manifest names it %r", bundle_dir, model.name)
                self.failures[name] = f"manifest name {model.name!r} differs from its folder {name!r}"
                continue
            self._models[name] = model
            log.info("serving %s/%s from %s on %s", name, model.version, bundle_dir, model.engine.provider)

    def get(self, name: str) -> LoadedModel:
        try:
            return self._models[name]
        except KeyError:
            known = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(f"model '{name}' is not served (available: {known})", model=name) from None

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def models(self) -> list[LoadedModel]:
        return [self._models[name] for name in sorted(self._models)]
