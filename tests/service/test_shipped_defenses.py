"""Every shipped bundle loads in the real service, as `make serve` runs it, and every version of it reads its
example images: the held-out digits, or for the CIFAR-10 bundle the first test image of each class."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from models.data import CIFAR10_CLASSES
from service.app import create_app
from service.manifest import load_manifest
from service.settings import Settings
from tests.conftest import EXAMPLES, SHIPPED_REPOSITORY

BUNDLES = sorted(p.name for p in SHIPPED_REPOSITORY.iterdir() if p.is_dir())
VERSIONS = sorted((p.parent.name, p.name) for p in SHIPPED_REPOSITORY.glob("*/*") if p.is_dir())
EXAMPLE_SETS = {
    # channels -> (file, label) pairs, and how many of the 10 must come back right
    1: ([(EXAMPLES / f"digit-{d}.png", str(d)) for d in range(10)], 9),
    3: ([(EXAMPLES / f"cifar10-{c}.png", c) for c in CIFAR10_CLASSES], 7),
}


@pytest.fixture(scope="module")
def shipped() -> Iterator[TestClient]:
    """The real app over the whole shipped repository, every version of each bundle served."""
    settings = Settings(model_repository=SHIPPED_REPOSITORY, version_policy="all")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.parametrize(("name", "version"), VERSIONS)
def test_each_shipped_bundle_reads_its_example_images(shipped: TestClient, name: str, version: str) -> None:
    examples, at_least = EXAMPLE_SETS[load_manifest(SHIPPED_REPOSITORY / name / version).input.channels]
    answers = []
    for part in (examples[:5], examples[5:]):  # multipart uploads take at most 9 files
        files = [("files", (path.name, path.read_bytes(), "image/png")) for path, _ in part]
        response = shipped.post(f"/v1/models/{name}/versions/{version}/predict", files=files)
        assert response.status_code == 200, response.text
        answers += [p["label"] for p in response.json()["predictions"]]
    assert sum(answer == label for answer, (_, label) in zip(answers, examples, strict=True)) >= at_least, (
        answers
    )


def test_training_time_defenses_say_which_defense_they_serve(shipped: TestClient) -> None:
    listing = {m["name"]: m for m in shipped.get("/v1/models").json()["models"]}
    assert set(listing) == set(BUNDLES)
    assert listing["mnist-rse-apudae"]["defense"] is None
    defended = {name: info["defense"]["name"] for name, info in listing.items() if info["defense"]}
    assert sorted(defended.values()) == ["AMC", "Deep Defense", "Seiler"]
    assert all(listing[name]["samples"] == {"default": 1, "max": 1} for name in defended)
