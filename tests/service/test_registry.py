"""Bundles that must not be served are refused with a clear reason; the rest keep serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import StartupError, create_app
from service.manifest import ManifestError, load_manifest
from service.registry import ModelRegistry, latest_versions
from service.settings import Settings
from tests.conftest import DEFAULT_MODEL, bundle_dir

CPU = ["CPUExecutionProvider"]


def _load(registry: ModelRegistry, repository: Path) -> None:
    registry.load_repository(repository, providers=CPU, intra_op_threads=1, seed=None, warmup=True)


def test_shipped_bundle_verifies(shipped_manifest) -> None:
    assert shipped_manifest.name == DEFAULT_MODEL
    assert shipped_manifest.metrics.clean_accuracy >= 0.97
    assert shipped_manifest.produced_by.startswith("python -m export.")


def test_tampered_graph_is_refused(repository_copy: Path) -> None:
    bundle = bundle_dir(repository_copy)
    graph = bundle / load_manifest(bundle).graphs["ensemble"].path
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="sha256"):
        load_manifest(bundle)
    registry = ModelRegistry()
    _load(registry, repository_copy)
    assert DEFAULT_MODEL not in registry and "sha256" in registry.failures[DEFAULT_MODEL]


def test_service_will_not_start_without_its_default_model(repository_copy: Path) -> None:
    bundle = bundle_dir(repository_copy)
    (bundle / load_manifest(bundle).graphs["ensemble"].path).unlink()
    app = create_app(Settings(model_repository=repository_copy))
    with pytest.raises(StartupError, match="is missing"), TestClient(app):
        pass


def test_broken_second_bundle_does_not_stop_the_default(repository_copy: Path) -> None:
    broken = repository_copy / "broken-model" / "1"
    shutil.copytree(bundle_dir(repository_copy), broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["name"] = "broken-model"
    manifest["rse"]["default_samples"] = 10_000  # above max_samples: invalid manifest
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with TestClient(create_app(Settings(model_repository=repository_copy))) as client:
        listing = client.get("/v1/models").json()
        assert [m["name"] for m in listing["models"]] == [DEFAULT_MODEL]
        assert "default_samples exceeds max_samples" in listing["failed"]["broken-model"]
        assert client.get("/v1/models/broken-model").status_code == 404


def test_latest_numeric_version_wins(repository_copy: Path) -> None:
    source = bundle_dir(repository_copy)
    shutil.copytree(source, source.parent / "10")
    (source.parent / "9").mkdir()  # no manifest: ignored
    assert latest_versions(repository_copy)[DEFAULT_MODEL].name == "10"
