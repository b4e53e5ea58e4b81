"""Every shipped bundle loads in the real service, as `make serve` runs it, and reads the example digits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import EXAMPLES, SHIPPED_REPOSITORY

BUNDLES = sorted(p.name for p in SHIPPED_REPOSITORY.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def shipped() -> Iterator[TestClient]:
    """The real app over the whole shipped repository."""
    with TestClient(create_app(Settings(model_repository=SHIPPED_REPOSITORY))) as test_client:
        yield test_client


@pytest.mark.parametrize("name", BUNDLES)
def test_each_shipped_bundle_reads_the_example_digits(shipped: TestClient, name: str) -> None:
    labels = []
    for digits in (range(5), range(5, 10)):  # multipart uploads take at most 9 files
        files = [
            ("files", (f"d{d}.png", (EXAMPLES / f"digit-{d}.png").read_bytes(), "image/png")) for d in digits
        ]
        response = shipped.post(f"/v1/models/{name}/predict", files=files)
        assert response.status_code == 200, response.text
        labels += [p["label"] for p in response.json()["predictions"]]
    assert sum(label == str(d) for d, label in enumerate(labels)) >= 9, labels


def test_training_time_defenses_say_which_defense_they_serve(shipped: TestClient) -> None:
    listing = {m["name"]: m for m in shipped.get("/v1/models").json()["models"]}
    assert set(listing) == set(BUNDLES)
    assert listing["mnist-rse-apudae"]["defense"] is None
    defended = {name: info["defense"]["name"] for name, info in listing.items() if info["defense"]}
    assert sorted(defended.values()) == ["AMC", "Deep Defense", "Seiler"]
    assert all(listing[name]["samples"] == {"default": 1, "max": 1} for name in defended)
