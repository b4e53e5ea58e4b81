"""The float16 ensemble: converted from the shipped bundle, checked against its float32 graph, recorded in the
manifest, and served by the real app when asked for."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from export.fp16 import DEFAULT_TOLERANCE, FP16_FILENAME, add_fp16
from service.app import create_app
from service.manifest import FP16_ENSEMBLE, load_manifest
from service.settings import Settings
from tests.conftest import DEFAULT_MODEL, EXAMPLES, SHIPPED_REPOSITORY, bundle_dir


@pytest.fixture(scope="module")
def fp16_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("fp16") / "model_repository"
    shutil.copytree(bundle_dir().parent, repository / DEFAULT_MODEL)
    add_fp16(bundle_dir(repository), None, DEFAULT_TOLERANCE)
    return repository


def test_the_fp16_graph_stays_within_tolerance_and_its_accuracy_is_recorded(fp16_repository: Path) -> None:
    manifest = load_manifest(bundle_dir(fp16_repository), verify=True)
    before = load_manifest(bundle_dir(), verify=True)
    check = manifest.metrics.fp16
    assert manifest.graphs[FP16_ENSEMBLE].path == FP16_FILENAME
    assert check is not None and 0 < check.max_probability_diff <= DEFAULT_TOLERANCE
    assert check.images == before.metrics.test_images
    # same test digits, same noise seeds: only the graph differs; within a point of the float32 figures
    assert abs(check.clean_accuracy - before.metrics.clean_accuracy) <= 0.01
    assert abs(check.flag_rate_clean - before.metrics.flag_rate_clean) <= 0.01
    assert manifest.model_dump(exclude={"graphs", "metrics"}) == before.model_dump(
        exclude={"graphs", "metrics"}
    )


def test_a_conversion_beyond_the_tolerance_is_refused_and_leaves_the_bundle_as_it_was(tmp_path: Path) -> None:
    shutil.copytree(bundle_dir().parent, tmp_path / DEFAULT_MODEL)
    folder = bundle_dir(tmp_path)
    files = {path.name: path.read_bytes() for path in folder.iterdir()}
    with pytest.raises(SystemExit, match="differ by up to"):
        add_fp16(folder, None, tolerance=1e-9)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == files


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_the_service_serves_the_graph_of_the_precision_asked_for(
    fp16_repository: Path, precision: str
) -> None:
    settings = Settings(model_repository=fp16_repository, precision=precision)
    with TestClient(create_app(settings)) as client:
        (info,) = client.get("/v1/models").json()["models"]
        assert info["precision"] == precision
        files = [
            ("files", (f"{d}.png", (EXAMPLES / f"digit-{d}.png").read_bytes(), "image/png")) for d in range(9)
        ]
        answers = [p["label"] for p in client.post("/v1/predict", files=files).json()["predictions"]]
    assert sum(answer == str(d) for d, answer in enumerate(answers)) >= 8, answers


def test_fp16_asked_for_a_bundle_without_the_graph_serves_float32(tmp_path: Path) -> None:
    shutil.copytree(SHIPPED_REPOSITORY / "mnist-seiler", tmp_path / "mnist-seiler")
    assert FP16_ENSEMBLE not in load_manifest(bundle_dir(tmp_path, "mnist-seiler")).graphs
    settings = Settings(model_repository=tmp_path, default_model="mnist-seiler", precision="fp16")
    with TestClient(create_app(settings)) as client:
        (info,) = client.get("/v1/models").json()["models"]
    assert info["precision"] == "fp32"
