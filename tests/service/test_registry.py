"""The registry over real bundles and real sessions: what it refuses, which versions it serves, and how it
swaps, drains, loads and unloads while the old model keeps answering."""

from __future__ import annotations

import gc
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import StartupError, build_registry, create_app
from service.errors import Conflict, LoadFailed, ModelNotFound
from service.manifest import ManifestError, load_manifest
from service.metrics import ServiceMetrics
from service.registry import LoadOptions, ModelRegistry
from service.repository import VersionPolicy, scan
from service.settings import Settings
from tests.conftest import DEFAULT_MODEL, EXAMPLES, bundle_dir, publish_version

OPTIONS = LoadOptions(["CPUExecutionProvider"], intra_op_threads=1)
PROBE = np.zeros((1, 1, 28, 28), dtype=np.float32)


def _registry(repository: Path, policy: VersionPolicy | None = None) -> ModelRegistry:
    registry = ModelRegistry(repository, OPTIONS, policy, protected=[DEFAULT_MODEL])
    registry.sync()
    return registry


def _states(registry: ModelRegistry) -> dict[str, tuple[str, str]]:
    """version -> (state, reason) of the default model's index entries."""
    return {e.version: (e.state, e.reason) for e in registry.index() if e.name == DEFAULT_MODEL}


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
    registry = _registry(repository_copy)
    assert DEFAULT_MODEL not in registry and "sha256" in registry.failures[f"{DEFAULT_MODEL}/1"]


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
        assert "default_samples exceeds max_samples" in listing["failed"]["broken-model/1"]
        assert client.get("/v1/models/broken-model").status_code == 404


def test_numeric_version_order_and_policies(repository_copy: Path) -> None:
    source = bundle_dir(repository_copy)
    shutil.copytree(source, source.parent / "10")
    shutil.copytree(source, source.parent / "9")
    (source.parent / "11").mkdir()  # no manifest: ignored
    on_disk = scan(repository_copy)[DEFAULT_MODEL]
    assert VersionPolicy().candidates(DEFAULT_MODEL, on_disk) == ["10", "9", "1"]
    assert VersionPolicy("specific", specific={DEFAULT_MODEL: frozenset({"1", "9"})}).candidates(
        DEFAULT_MODEL, on_disk
    ) == ["9", "1"]
    assert VersionPolicy("specific", specific={"other": frozenset({"1"})}).limit(DEFAULT_MODEL) == 1
    assert VersionPolicy("all").limit(DEFAULT_MODEL) is None


def test_version_policy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFENDED_VERSION_POLICY", "specific")
    monkeypatch.setenv("DEFENDED_MODEL_VERSIONS", '{"mnist-rse-apudae": [1, 2]}')
    policy = build_registry(Settings(), ServiceMetrics()).policy
    assert policy == VersionPolicy("specific", 1, {DEFAULT_MODEL: frozenset({"1", "2"})})


def test_several_versions_serve_at_once(repository_copy: Path) -> None:
    publish_version(repository_copy, "2")
    registry = _registry(repository_copy, VersionPolicy("all"))
    assert registry.versions(DEFAULT_MODEL) == ["2", "1"]
    assert registry.get(DEFAULT_MODEL).version == "2"
    assert registry.get(DEFAULT_MODEL, "1").version == "1"
    with pytest.raises(ModelNotFound, match="no version '3'"):
        registry.get(DEFAULT_MODEL, "3")
    only_one = _registry(
        repository_copy, VersionPolicy("specific", specific={DEFAULT_MODEL: frozenset({"1"})})
    )
    assert only_one.versions(DEFAULT_MODEL) == ["1"]
    assert _states(only_one)["2"] == ("UNAVAILABLE", "not selected: serving specific versions ['1']")


def test_a_client_pins_a_version_over_http(repository_copy: Path) -> None:
    publish_version(repository_copy, "2")
    digit = (EXAMPLES / "digit-3.png").read_bytes()
    settings = Settings(model_repository=repository_copy, version_policy="all")
    with TestClient(create_app(settings)) as client:
        for version in ("1", "2"):
            response = client.post(
                f"/v1/models/{DEFAULT_MODEL}/versions/{version}/predict",
                files=[("files", ("digit-3.png", digit, "image/png"))],
            )
            assert response.status_code == 200, response.text
            (prediction,) = response.json()["predictions"]
            assert prediction["model"] == {"name": DEFAULT_MODEL, "version": version}
        missing = client.post(
            f"/v1/models/{DEFAULT_MODEL}/versions/3/predict",
            files=[("files", ("digit-3.png", digit, "image/png"))],
        )
        assert missing.status_code == 404 and "no version '3'" in missing.json()["error"]


def test_new_version_swaps_in_and_the_old_one_drains(repository_copy: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="service.registry")
    registry = _registry(repository_copy)
    in_flight = registry.get(DEFAULT_MODEL)  # what a running request holds
    publish_version(repository_copy, "2")
    registry.sync()
    assert registry.get(DEFAULT_MODEL).version == "2"
    assert _states(registry) == {
        "2": ("READY", ""),
        "1": ("UNAVAILABLE", "not selected: serving the latest 1 version(s)"),
    }
    # the old version is out of the registry but still answers whoever holds it, on sessions never closed
    assert in_flight.version == "1" and in_flight.run(PROBE, 4, purify=True).summary.class_index.shape == (1,)
    assert "released mnist-rse-apudae/1" not in caplog.text
    del in_flight
    gc.collect()
    assert "released mnist-rse-apudae/1: its last request has finished" in caplog.text


def test_refused_new_versions_leave_the_old_one_serving(repository_copy: Path) -> None:
    registry = _registry(repository_copy)
    serving = registry.get(DEFAULT_MODEL)
    publish_version(repository_copy, "2", tamper=True)

    def unreadable_input(manifest: dict) -> None:  # hashes fine, sessions fine, the warm-up run fails
        manifest["input"].update(channels=3, color_mode="RGB")

    publish_version(repository_copy, "3", edit=unreadable_input)
    registry.sync()
    assert registry.get(DEFAULT_MODEL) is serving
    failures = registry.failures
    assert (
        "sha256" in failures[f"{DEFAULT_MODEL}/2"] and "warm-up run failed" in failures[f"{DEFAULT_MODEL}/3"]
    )
    assert _states(registry)["2"][0] == _states(registry)["3"][0] == "UNAVAILABLE"
    registry.sync()  # unchanged refused bundles are not retried on every scan
    assert registry.get(DEFAULT_MODEL) is serving
    shutil.rmtree(repository_copy / DEFAULT_MODEL / "3")
    shutil.rmtree(repository_copy / DEFAULT_MODEL / "2")
    publish_version(repository_copy, "2")  # fixed: new files, so it is tried again
    registry.sync()
    assert registry.get(DEFAULT_MODEL).version == "2" and registry.failures == {}


def test_bundle_modified_in_place_is_reloaded_only_if_it_verifies(repository_copy: Path) -> None:
    registry = _registry(repository_copy)
    serving = registry.get(DEFAULT_MODEL)
    manifest_path = bundle_dir(repository_copy) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["graphs"]["ensemble"]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    registry.sync()
    assert registry.get(DEFAULT_MODEL) is serving and "sha256" in registry.failures[f"{DEFAULT_MODEL}/1"]
    manifest["graphs"]["ensemble"]["sha256"] = serving.manifest.graphs["ensemble"].sha256
    manifest["description"] = "re-described"
    manifest_path.write_text(json.dumps(manifest))
    registry.sync()
    assert registry.get(DEFAULT_MODEL) is not serving
    assert registry.get(DEFAULT_MODEL).manifest.description == "re-described"


def test_load_and_unload(repository_copy: Path) -> None:
    publish_version(repository_copy, "1", name="second-model")
    registry = _registry(repository_copy)
    assert registry.names() == [DEFAULT_MODEL, "second-model"]
    registry.unload("second-model")
    registry.sync()  # polling leaves an unloaded model alone
    assert "second-model" not in registry
    assert [(e.name, e.state, e.reason) for e in registry.index()] == [
        (DEFAULT_MODEL, "READY", ""),
        ("second-model", "UNAVAILABLE", "unloaded"),
    ]
    registry.load("second-model")
    assert registry.get("second-model").version == "1"
    before = registry.get(DEFAULT_MODEL)
    registry.load(DEFAULT_MODEL)  # a load of a serving model reloads it with fresh sessions
    assert registry.get(DEFAULT_MODEL) is not before
    with pytest.raises(Conflict, match="default model"):
        registry.unload(DEFAULT_MODEL)
    with pytest.raises(ModelNotFound):
        registry.load("no-such-model")
    graph = repository_copy / "second-model" / "1" / "ensemble.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(LoadFailed, match=r"sha256.*\(second-model is serving version\(s\) 1\)"):
        registry.load("second-model")
    assert registry.get("second-model").version == "1"
