"""`python -m service` as a user starts it (what `make serve` runs), over real TCP on loopback."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.conftest import DEFAULT_MODEL, EXAMPLES, serve


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("live"), DEFENDED_MAX_BODY_BYTES="65536") as server:
        yield server.url


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
    # a clean digit: at or below the clean mean reconstruction error, so adaptive compute skipped the steps
    assert prediction["flags"]["scores"]["reconstruction"] <= 0 and prediction["purification"]["steps"] == 0


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


def test_sigterm_drains_in_flight_work_and_exits_zero(tmp_path) -> None:
    """SIGTERM while a slow request runs: it still gets its 200, nothing new is accepted, exit status 0,
    also when more SIGTERMs arrive while the process winds down."""
    noise = np.random.default_rng(0).random((32, 28, 28)).tolist()  # far from digits: every image is purified
    with serve(tmp_path) as server, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            httpx.post, f"{server.url}/v1/predict", json={"instances": noise, "samples": 64}, timeout=60
        )
        time.sleep(0.5)
        assert not slow.done(), "the request should still be running when the signal arrives"
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(httpx.TransportError):  # the listening socket is closed at once
            httpx.get(f"{server.url}/readyz", timeout=2)
        response = slow.result()
        assert response.status_code == 200 and len(response.json()["predictions"]) == 32
        while server.process.poll() is None:  # repeated stop signals while it exits must not kill it
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.01)
        assert server.stop() == 0
    assert "SIGTERM: draining" in server.log()


def test_a_request_whose_client_hung_up_never_reaches_the_engine(tmp_path) -> None:
    noise = np.random.default_rng(1).random((32, 28, 28)).tolist()
    with serve(tmp_path, DEFENDED_ENGINE_WORKERS="1") as server, ThreadPoolExecutor(1) as pool:
        url = server.url
        slow = pool.submit(
            httpx.post, f"{url}/v1/predict", json={"instances": noise, "samples": 64}, timeout=60
        )
        time.sleep(0.3)  # the slow call now holds the only engine thread
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/predict", json={"instances": noise[:1]}, timeout=0.5)
        assert slow.result().status_code == 200
        time.sleep(0.2)
        metrics = httpx.get(f"{url}/metrics").text
    dropped = [line for line in metrics.splitlines() if line.startswith("defended_queue_dropped_total{")]
    assert dropped and dropped[0].endswith(" 1.0"), dropped
    # the slow request ran alone: the abandoned one was never merged into an engine call
    assert 'defended_engine_batch_images_count{model="mnist-rse-apudae",version="1"} 1.0' in metrics
