"""Every kind of bad input gets a 4xx with a JSON body that names the problem: never a 500, never a hang."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import EXAMPLES, assert_error

GOOD_PNG = (EXAMPLES / "digit-1.png").read_bytes()
ZEROS = np.zeros((28, 28)).tolist()


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"instances": [base64.b64encode(b"GIF89a not really").decode()]}, 422, "not a decodable image"),
        ({"instances": [base64.b64encode(GOOD_PNG[:40]).decode()]}, 422, "instance 0"),
        ({"instances": ["!!notbase64!!"]}, 422, "invalid base64"),
        ({"instances": [np.zeros((3, 28, 28)).tolist()]}, 422, "does not match the model input"),
        ({"instances": [np.zeros((28, 27)).tolist()]}, 422, "does not match the model input"),
        ({"instances": [np.full((28, 28), 255.0).tolist()]}, 422, "outside the input range"),
        ({"instances": [[["x"] * 28] * 28]}, 422, "not a rectangular numeric array"),
        ({"instances": [ZEROS, 5]}, 422, "instance 1"),
        ({"instances": []}, 422, "no instances"),
        ({"images": [ZEROS]}, 422, "instances"),
        ({"instances": [ZEROS], "samples": 0}, 422, "samples must be between 1 and 64"),
        ({"instances": [ZEROS], "samples": 65}, 422, "samples must be between 1 and 64"),
        ({"instances": [ZEROS], "samples": "many"}, 422, "samples must be an integer"),
        ({"instances": [ZEROS] * 9}, 413, "limit is 8"),
    ],
    ids=[
        "not-an-image",
        "truncated-png",
        "bad-base64",
        "wrong-channels",
        "wrong-size",
        "out-of-range",
        "non-numeric",
        "wrong-type",
        "empty",
        "missing-instances",
        "samples-zero",
        "samples-too-many",
        "samples-not-int",
        "too-many-instances",
    ],
)
def test_bad_json_bodies(client: TestClient, body: dict, status: int, fragment: str) -> None:
    assert_error(client.post("/v1/predict", json=body), status, fragment)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_values(client: TestClient, token: str) -> None:
    row = "[" + ",".join(["0.5"] * 27 + [token]) + "]"
    raw = '{"instances": [[' + ",".join([row] * 28) + "]]}"
    response = client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 422, "NaN or infinite")


def test_malformed_json_and_wrong_media_type(client: TestClient) -> None:
    assert_error(
        client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "not valid JSON",
    )
    assert_error(
        client.post("/v1/predict", content=b"[" * 100_000, headers={"content-type": "application/json"}),
        400,
        "not valid JSON",
    )
    assert_error(client.post("/v1/predict", json=[1, 2]), 422, "JSON object")
    assert_error(
        client.post("/v1/predict", content=GOOD_PNG, headers={"content-type": "image/png"}), 415, "image/png"
    )


def test_bad_uploads(client: TestClient) -> None:
    assert_error(
        client.post("/v1/predict", files=[("files", ("x.png", b"garbage", "image/png"))]),
        422,
        "not a decodable image",
    )
    many = [("files", (f"{i}.png", GOOD_PNG, "image/png")) for i in range(9)]
    assert_error(client.post("/v1/predict", files=many), 413, "limit is 8")
    assert_error(client.post("/v1/predict", data={"samples": "3"}), 415, "urlencoded")
    assert_error(
        client.post(
            "/v1/predict", files=[("files", ("x.png", GOOD_PNG, "image/png"))], data={"samples": "x"}
        ),
        422,
        "samples must be an integer",
    )


def test_unknown_model_and_route(client: TestClient) -> None:
    assert_error(
        client.post("/v1/models/nope/predict", json={"instances": [ZEROS]}), 404, "'nope' is not served"
    )
    assert_error(client.get("/v1/models/nope"), 404, "nope")
    assert client.get("/no/such/route").status_code == 404
    assert client.get("/no/such/route").json()["error"] == "Not Found"
    assert_error(client.get("/v1/predict"), 405)


def test_body_over_the_limit(client: TestClient) -> None:
    limit = client.app.state.dataplane.settings.max_body_bytes
    payload = b"x" * (limit + 1)
    assert_error(
        client.post("/v1/predict", content=payload, headers={"content-type": "application/json"}),
        413,
        "exceeds",
    )

    def chunks():  # no Content-Length: the limit must hold on a streamed body too
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    assert_error(
        client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"}),
        413,
        "exceeds",
    )
