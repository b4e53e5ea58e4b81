"""Authentication, request ids, per-client rate limits and metrics, timeouts and access logs, through the
real app."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.logs import JsonFormatter
from service.settings import Settings
from tests.conftest import EXAMPLES, SHIPPED_REPOSITORY

CLIENT_KEY = "client-secret-1234"
ADMIN_KEY = "admin-secret-5678"
DIGIT = {"files": ("d.png", (EXAMPLES / "digit-3.png").read_bytes(), "image/png")}


def make_client(**settings) -> TestClient:
    return TestClient(create_app(Settings(model_repository=SHIPPED_REPOSITORY, **settings)))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory):
    key_file = tmp_path_factory.mktemp("secrets") / "keys"
    key_file.write_text("# mounted secret\nfile-key-0000\n\n")
    with make_client(api_keys=[CLIENT_KEY], api_keys_file=key_file, admin_api_keys=[ADMIN_KEY]) as client:
        yield client


def metric(app_client: TestClient, name: str, **labels: str) -> float:
    registry = app_client.app.state.dataplane.metrics.registry
    return registry.get_sample_value(name, labels) or 0.0


def test_keys_are_required_and_checked(secured: TestClient) -> None:
    missing = secured.post("/v1/predict", files=DIGIT)
    assert missing.status_code == 401 and missing.json()["code"] == "unauthorized"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = secured.post("/v1/predict", files=DIGIT, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]
    for headers in (
        {"Authorization": f"Bearer {CLIENT_KEY}"},
        {"X-API-Key": "file-key-0000"},
        {"Authorization": f"Bearer {ADMIN_KEY}"},
    ):
        response = secured.post("/v1/predict", files=DIGIT, headers=headers)
        assert response.status_code == 200, response.text


def test_probes_and_metrics_stay_open(secured: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert secured.get(path).status_code == 200


def test_admin_routes_need_an_admin_key(secured: TestClient) -> None:
    client_try = secured.post("/v2/repository/index", headers={"X-API-Key": CLIENT_KEY})
    assert client_try.status_code == 403 and client_try.json()["code"] == "forbidden"
    admin_try = secured.post("/v2/repository/index", headers={"X-API-Key": ADMIN_KEY})
    assert admin_try.status_code != 403  # past authorisation; the route itself decides


def test_per_client_metrics_name_keys_by_id_never_by_value(secured: TestClient) -> None:
    from service.auth import key_id

    ident = key_id(CLIENT_KEY)
    before = metric(secured, "defended_client_requests_total", client=ident)
    flagged_before = metric(secured, "defended_client_flagged_total", client=ident)
    adversarial = next(EXAMPLES.glob("adversarial-pgd-digit-*.png")).read_bytes()
    response = secured.post(
        "/v1/predict",
        files={"files": ("a.png", adversarial, "image/png")},
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert response.json()["predictions"][0]["flags"]["adversarial"]
    assert metric(secured, "defended_client_requests_total", client=ident) == before + 1
    assert metric(secured, "defended_client_flagged_total", client=ident) == flagged_before + 1
    exposition = secured.get("/metrics").text
    assert ident in exposition and CLIENT_KEY not in exposition and ADMIN_KEY not in exposition


def test_request_id_is_echoed_or_made(secured: TestClient) -> None:
    headers = {"X-API-Key": CLIENT_KEY}
    given = secured.post("/v1/predict", files=DIGIT, headers={**headers, "X-Request-ID": "trace-42.a"})
    assert given.headers["x-request-id"] == "trace-42.a"
    unsafe = secured.post("/v1/predict", files=DIGIT, headers={**headers, "X-Request-ID": "bad id;drop"})
    assert unsafe.headers["x-request-id"] != "bad id;drop" and len(unsafe.headers["x-request-id"]) == 32
    assert secured.get("/healthz").headers["x-request-id"]


def test_access_log_is_json_with_the_decision_and_no_secret(secured: TestClient, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        secured.post("/v1/predict", files=DIGIT, headers={"X-API-Key": CLIENT_KEY, "X-Request-ID": "log-1"})
    (record,) = [r for r in caplog.records if r.name == "service.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["route"] == "/v1/predict" and line["status"] == 200 and line["model"] == "mnist-rse-apudae"
    assert line["client"].startswith("key-") and "flag_reasons" in line and line["latency_ms"] > 0
    assert all(secret not in caplog.text for secret in (CLIENT_KEY, ADMIN_KEY))


def test_rate_limit_answers_429_with_retry_after() -> None:
    with make_client(rate_limit_per_second=0.5, rate_limit_burst=2) as client:
        statuses = [client.post("/v1/predict", files=DIGIT).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        refused = client.post("/v1/predict", files=DIGIT)
        assert refused.headers["retry-after"] == "2" and refused.json()["code"] == "rate_limited"
        assert client.get("/healthz").status_code == 200  # probes are not rate limited
        assert (
            metric(client, "defended_client_rejected_total", client="testclient", reason="rate_limited") == 2
        )


def test_deadline_gives_a_json_504() -> None:
    noise = np.random.default_rng(0).random((16, 28, 28)).tolist()
    with make_client(request_timeout_seconds=0.001) as client:
        response = client.post("/v1/predict", json={"instances": noise, "samples": 64})
    assert response.status_code == 504 and response.json()["code"] == "timeout"


def test_a_request_cannot_smuggle_options_the_service_does_not_honour(secured: TestClient) -> None:
    response = secured.post(
        "/v1/predict",
        json={"instances": [np.zeros((28, 28)).tolist()], "seed": 1},
        headers={"X-API-Key": CLIENT_KEY},
    )
    assert response.status_code == 422 and "seed" in response.json()["error"]


def test_identical_requests_draw_different_noise(secured: TestClient) -> None:
    body = {"instances": [np.full((28, 28), 0.5).tolist()], "samples": 8}
    first, second = (
        secured.post("/v1/predict", json=body, headers={"X-API-Key": CLIENT_KEY}).json()["predictions"][0]
        for _ in range(2)
    )
    assert first["probabilities"] != second["probabilities"]


def test_key_file_is_read(tmp_path: Path) -> None:
    from service.settings import read_key_file

    path = tmp_path / "k"
    path.write_text("a\n# b\n\n c \n")
    assert read_key_file(path) == ["a", "c"]
