"""`python -m service` as a user starts it (what `make serve` runs), over real TCP on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import DEFAULT_MODEL, EXAMPLES, running_service


@pytest.fixture(scope="module")
def live_server() -> Iterator[str]:
    with running_service(DEFENDED_MAX_BODY_BYTES="65536") as url:
        yield url


def _post_example(url: str, name: str) -> dict:
    with (EXAMPLES / name).open("rb") as handle:
        response = httpx.post(f"{url}/v1/predict", files={"files": (name, handle, "image/png")})
    assert response.status_code == 200
    (prediction,) = response.json()["predictions"]
    assert prediction["model"]["name"] == DEFAULT_MODEL
    return prediction


def test_readme_curl_equivalent(live_server: str) -> None:
    prediction = _post_example(live_server, "digit-7.png")
    assert prediction["label"] == "7"
    assert {"confidence", "probabilities", "ensemble", "flags", "purification", "model"} <= set(prediction)
    assert prediction["purification"]["steps"] == 13


def test_readme_curl_on_the_adversarial_example(live_server: str) -> None:
    (path,) = EXAMPLES.glob("adversarial-pgd-digit-*.png")
    flags = _post_example(live_server, path.name)["flags"]
    assert flags["adversarial"] is True and flags["reasons"]


def test_streamed_body_over_the_limit_is_refused(live_server: str) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * 4096

    response = httpx.post(
        f"{live_server}/v1/predict",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 413 and "exceeds" in response.json()["error"]
    assert httpx.get(f"{live_server}/healthz").status_code == 200
