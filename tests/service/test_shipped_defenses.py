"""Every shipped bundle loads in the real service and reads the shipped example digits correctly."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import EXAMPLES, SHIPPED_REPOSITORY

BUNDLES = sorted(p.name for p in SHIPPED_REPOSITORY.iterdir() if p.is_dir())


@pytest.mark.parametrize("name", BUNDLES)
def test_each_shipped_bundle_reads_the_example_digits(client: TestClient, name: str) -> None:
    files = [
        ("files", (f"digit-{d}.png", (EXAMPLES / f"digit-{d}.png").read_bytes(), "image/png"))
        for d in range(10)
    ]
    response = client.post(f"/v1/models/{name}/predict", files=files)
    assert response.status_code == 200, response.text
    labels = [p["label"] for p in response.json()["predictions"]]
    assert sum(label == str(d) for d, label in enumerate(labels)) >= 9, labels


def test_training_time_defenses_say_which_defense_they_serve(client: TestClient) -> None:
    listing = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert listing["mnist-rse-apudae"]["defense"] is None
    defended = {name: info["defense"]["name"] for name, info in listing.items() if info["defense"]}
    assert set(defended.values()) <= {"AMC", "Deep Defense", "Seiler"}
    assert all(listing[name]["samples"] == {"default": 1, "max": 1} for name in defended)
