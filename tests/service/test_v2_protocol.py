"""Open Inference Protocol conformance through the real app (ASGI, lifespan, onnxruntime): every path, the
binary and classification extensions, and every error case with its status and `{"error": ...}` body."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from tritonclient.http import InferResult

from service.app import create_app
from service.settings import Settings
from tests.conftest import DEFAULT_MODEL, EXAMPLES, assert_error, publish_version

INFER = f"/v2/models/{DEFAULT_MODEL}/infer"
OUTPUT_NAMES = [
    "probabilities", "label", "confidence", "adversarial", "adversarial_score", "agreement", "reconstruction_z",
]  # fmt: skip


def digits(*which: int) -> np.ndarray:
    """uint8 [B, 1, 28, 28] pixels of the example digits."""
    return np.stack([np.asarray(Image.open(EXAMPLES / f"digit-{d}.png"))[None] for d in which])


def images_input(array: np.ndarray, datatype: str = "UINT8", **extra) -> dict:
    return {
        "name": "images",
        "datatype": datatype,
        "shape": list(array.shape),
        "data": array.ravel().tolist(),
        **extra,
    }


def binary_body(request: dict, *buffers: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(request).encode()
    return header + b"".join(buffers), {"Inference-Header-Content-Length": str(len(header))}


def outputs(response) -> dict[str, dict]:
    return {output["name"]: output for output in response.json()["outputs"]}


def test_server_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2").json() == {
        "name": "defended-inference",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "classification", "model_repository"],
    }
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    metadata = client.get(f"/v2/models/{DEFAULT_MODEL}").json()
    assert metadata == client.get(f"/v2/models/{DEFAULT_MODEL}/versions/1").json()
    assert metadata["name"] == DEFAULT_MODEL and metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnx_onnxv1"
    assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("probabilities", "FP32", [-1, 10]),
        ("label", "BYTES", [-1]),
        ("confidence", "FP32", [-1]),
        ("adversarial", "BOOL", [-1]),
        ("adversarial_score", "FP32", [-1]),
        ("agreement", "FP32", [-1]),
        ("reconstruction_z", "FP32", [-1]),
    ]
    for path in (f"/v2/models/{DEFAULT_MODEL}/ready", f"/v2/models/{DEFAULT_MODEL}/versions/1/ready"):
        assert client.get(path).json() == {"name": DEFAULT_MODEL, "ready": True}
    assert client.post("/v2/repository/index").json() == [
        {"name": DEFAULT_MODEL, "version": "1", "state": "READY", "reason": ""}
    ]
    assert client.post("/v2/repository/index", json={"ready": True}).status_code == 200


def test_infer_json_uint8_and_fp32_agree_on_the_digits(client: TestClient) -> None:
    pixels = digits(3, 7, 0)
    request = {"id": "req-1", "parameters": {"samples": 12}, "inputs": [images_input(pixels)]}
    response = client.post(INFER, json=request)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == (DEFAULT_MODEL, "1", "req-1")
    assert body["parameters"] == {"samples": 12, "purify": True}
    tensors = outputs(response)
    assert list(tensors) == OUTPUT_NAMES
    assert tensors["label"] == {"name": "label", "datatype": "BYTES", "shape": [3], "data": ["3", "7", "0"]}
    probabilities = np.asarray(tensors["probabilities"]["data"]).reshape(tensors["probabilities"]["shape"])
    assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert np.allclose(tensors["confidence"]["data"], probabilities.max(axis=1))
    assert all(isinstance(flag, bool) for flag in tensors["adversarial"]["data"])
    scores = np.asarray(tensors["adversarial_score"]["data"])
    assert ((scores > 0) == np.asarray(tensors["adversarial"]["data"])).all()
    # nested FP32 data in the model's range: the same digits, the same answer
    nested = (pixels.astype(np.float32) / 255).tolist()
    fp32 = {"name": "images", "datatype": "FP32", "shape": [3, 1, 28, 28], "data": nested}
    response = client.post(INFER, json={"inputs": [fp32], "outputs": [{"name": "label"}]})
    assert outputs(response)["label"]["data"] == ["3", "7", "0"] and "id" not in response.json()


def test_binary_tensors_in_and_out_with_classification(client: TestClient) -> None:
    pixels = digits(4, 1)
    request = {
        "inputs": [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": [2, 1, 28, 28],
                "parameters": {"binary_data_size": 1568},
            }
        ],
        "outputs": [
            {"name": "label", "parameters": {"binary_data": True}},
            {"name": "probabilities", "parameters": {"classification": 3, "binary_data": True}},
            {"name": "adversarial", "parameters": {"binary_data": True}},
            {"name": "agreement"},
        ],
    }
    body, headers = binary_body(request, pixels.tobytes())
    response = client.post(
        INFER, content=body, headers={**headers, "content-type": "application/octet-stream"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    # decoded with tritonclient's own parser: the framing is what Triton clients expect
    result = InferResult.from_response_body(
        response.content, header_length=int(response.headers["Inference-Header-Content-Length"])
    )
    assert result.as_numpy("label").tolist() == [b"4", b"1"]
    top3 = result.as_numpy("probabilities")
    assert top3.shape == (2, 3)
    for row, label in zip(top3, ["4", "1"], strict=True):
        values = [entry.decode().split(":") for entry in row]
        assert values[0][1:] == [label, label]  # "value:index:label", most probable first
        assert [float(v[0]) for v in values] == sorted((float(v[0]) for v in values), reverse=True)
    assert result.as_numpy("adversarial").dtype == bool
    assert result.get_output("agreement")["data"] == result.as_numpy("agreement").tolist()
    # binary_data_output makes every output binary, unless one says otherwise
    request = {"parameters": {"binary_data_output": True}, "inputs": request["inputs"], "outputs": None}
    body, headers = binary_body(request, pixels.tobytes())
    result = InferResult.from_response_body(
        (response := client.post(INFER, content=body, headers=headers)).content,
        header_length=int(response.headers["Inference-Header-Content-Length"]),
    )
    assert all("binary_data_size" in output["parameters"] for output in result.get_response()["outputs"])
    assert result.as_numpy("probabilities").shape == (2, 10)


def test_purify_false_drops_the_purifier_output(client: TestClient) -> None:
    request = {"parameters": {"purify": False, "samples": 3}, "inputs": [images_input(digits(2))]}
    response = client.post(INFER, json=request)
    assert response.json()["parameters"] == {"samples": 3, "purify": False}
    assert list(outputs(response)) == OUTPUT_NAMES[:-1]


def _request(**changes) -> dict:
    base = {"inputs": [images_input(digits(1))]}
    return {**base, **changes}


def _input(**changes) -> dict:
    return {**images_input(digits(1)), **changes}


@pytest.mark.parametrize(
    ("request_body", "status", "fragment"),
    [
        ({"inputs": []}, 400, "inputs"),
        ({"id": 5, "inputs": [_input()]}, 400, "id"),
        (_request(inputs=[_input(shape=[1, 1, 28, -28])]), 400, "shape"),
        (_request(inputs=[_input(shape=[1, 1, 28, "28"])]), 400, "shape"),
        (_request(inputs=[_input(data=[1, 2, 3])]), 400, "holds 3 values, shape [1, 1, 28, 28] needs 784"),
        (_request(inputs=[_input(data=[[1, 2], [3]])]), 400, "not a rectangular array"),
        (
            _request(inputs=[_input(datatype="FP32", data=["x"] * 784)]),
            400,
            "FP32 data must be numbers, got strings",
        ),
        (_request(inputs=[_input(data=[300] * 784)]), 400, "outside the UINT8 range"),
        (
            _request(inputs=[_input(data=[0.5] * 784)]),
            400,
            "UINT8 data must be integers, got fractional numbers",
        ),
        (_request(inputs=[_input(data=None)]), 400, "neither data nor parameters.binary_data_size"),
        (_request(inputs=[_input(parameters={"binary_data_size": 784})]), 400, "both data and"),
        (
            _request(inputs=[_input(parameters={"content_type": "x"})]),
            400,
            "unknown parameter(s) ['content_type']",
        ),
        (_request(parameters={"sample": 3}), 400, "unknown parameter(s) ['sample']"),
        (_request(parameters={"samples": "3"}), 400, "'samples' must be an integer"),
        (_request(parameters={"samples": True}), 400, "'samples' must be an integer"),
        (_request(parameters={"purify": 1}), 400, "'purify' must be true or false"),
        (_request(outputs=[{"name": "label"}, {"name": "label"}]), 400, "more than once"),
        (_request(outputs=[{"name": "label", "parameters": {"binary": True}}]), 400, "unknown parameter"),
        (_request(inputs=[_input(name="pixels")]), 422, "takes one input 'images', got ['pixels']"),
        (_request(inputs=[_input(), _input()]), 422, "takes one input 'images'"),
        (_request(inputs=[_input(datatype="INT64")]), 422, "must be FP32"),
        (_request(inputs=[_input(datatype="FP8")]), 422, "got FP8"),
        (_request(inputs=[_input(shape=[1, 784])]), 422, "the model takes [-1, 1, 28, 28]"),
        (_request(inputs=[_input(datatype="FP32", data=[2.0] * 784)]), 422, "outside the input range"),
        (_request(inputs=[_input(shape=[0, 1, 28, 28], data=[])]), 422, "no instances"),
        (_request(parameters={"samples": 0}), 422, "samples must be between 1 and 64"),
        (_request(parameters={"samples": 65}), 422, "samples must be between 1 and 64"),
        (_request(outputs=[{"name": "logits"}]), 422, "has no output 'logits'"),
        (
            _request(outputs=[{"name": "label", "parameters": {"classification": 2}}]),
            422,
            "'probabilities' only",
        ),
        (
            _request(outputs=[{"name": "probabilities", "parameters": {"classification": -1}}]),
            422,
            "positive",
        ),
        (
            _request(parameters={"purify": False}, outputs=[{"name": "reconstruction_z"}]),
            422,
            "needs purify=true",
        ),
        (_request(inputs=[_input(shape=[9, 1, 28, 28], data=[0] * 9 * 784)]), 413, "limit is 8"),
    ],
)
def test_bad_inference_requests(client: TestClient, request_body: dict, status: int, fragment: str) -> None:
    assert_error(client.post(INFER, json=request_body), status, fragment)


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [
        (b"{not json", {}, 400, "not valid JSON"),
        (b"[" * 100_000, {}, 400, "not valid JSON"),
        (b"[1, 2]", {}, 400, "must be a JSON object"),
        (b"\xff\xfe", {}, 400, "not valid JSON"),
        (
            b'{"inputs": [{"name": "images", "shape": [1,1,28,28], "datatype": "FP32", "data": [NaN]}]}',
            {},
            400,
            "784",
        ),
        (b"{}", {"Inference-Header-Content-Length": "x"}, 400, "Inference-Header-Content-Length"),
        (b"{}", {"Inference-Header-Content-Length": "3"}, 400, "at most the body's 2"),
        (b"\x1f\x8b", {"Content-Encoding": "gzip"}, 415, "Content-Encoding 'gzip' is not accepted"),
    ],
)
def test_malformed_bodies(client: TestClient, body: bytes, headers: dict, status: int, fragment: str) -> None:
    assert_error(client.post(INFER, content=body, headers=headers), status, fragment)


def test_non_finite_fp32(client: TestClient) -> None:
    row = ",".join(["0.5"] * 783 + ["NaN"])
    raw = '{"inputs": [{"name": "images", "shape": [1,1,28,28], "datatype": "FP32", "data": [' + row + "]}]}"
    assert_error(client.post(INFER, content=raw.encode()), 422, "NaN or infinite")
    nan = np.full((1, 1, 28, 28), np.nan, dtype="<f4").tobytes()
    request = {
        "inputs": [
            {
                "name": "images",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 3136},
            }
        ]
    }
    assert_error(
        client.post(INFER, content=(body := binary_body(request, nan))[0], headers=body[1]), 422, "NaN"
    )


@pytest.mark.parametrize(
    ("size", "trailing", "fragment"),
    [
        (784, b"", "only 783 follow"),
        (784, b"\0\0", "2 bytes of binary data follow"),
        (100, b"", "takes 784 bytes"),
    ],
)
def test_binary_framing_errors(client: TestClient, size: int, trailing: bytes, fragment: str) -> None:
    request = {
        "inputs": [
            {
                "name": "images",
                "shape": [1, 1, 28, 28],
                "datatype": "UINT8",
                "parameters": {"binary_data_size": size},
            }
        ]
    }
    payload = digits(1).tobytes()[:783] if not trailing and size == 784 else digits(1).tobytes() + trailing
    body, headers = binary_body(request, payload)
    assert_error(client.post(INFER, content=body, headers=headers), 400, fragment)


def test_unknown_models_versions_and_methods(client: TestClient) -> None:
    assert_error(client.get("/v2/models/nope"), 404, "'nope' is not served")
    assert_error(client.get("/v2/models/nope/ready"), 404, "nope")
    assert_error(client.get(f"/v2/models/{DEFAULT_MODEL}/versions/7"), 404, "no version '7'")
    assert_error(client.get(f"/v2/models/{DEFAULT_MODEL}/versions/7/ready"), 404, "no version '7'")
    assert_error(
        client.post(f"/v2/models/{DEFAULT_MODEL}/versions/7/infer", json=_request()), 404, "no version"
    )
    assert_error(client.post("/v2/models/nope/infer", json=_request()), 404, "nope")
    assert_error(client.get(INFER), 405)
    assert_error(client.post("/v2/repository/index", content=b'{"ready": "yes"}'), 400, "ready")
    assert_error(client.post(f"/v2/repository/models/{DEFAULT_MODEL}/load"), 403, "DEFENDED_ADMIN_API=true")
    assert_error(client.post(f"/v2/repository/models/{DEFAULT_MODEL}/unload"), 403, "DEFENDED_ADMIN_API=true")


def test_body_over_the_limit(client: TestClient) -> None:
    limit = client.app.state.dataplane.settings.max_body_bytes
    assert_error(client.post(INFER, content=b"x" * (limit + 1)), 413, "exceeds")


def test_openapi_describes_v1_and_v2(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    for path in (
        "/v1/predict", "/v1/models/{name}/predict", "/v1/models", "/v2", "/v2/health/live", "/v2/health/ready",
        "/v2/models/{name}", "/v2/models/{name}/versions/{version}", "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready", "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer", "/v2/repository/index",
        "/v2/repository/models/{name}/load", "/v2/repository/models/{name}/unload",
    ):  # fmt: skip
        assert path in paths, path
    infer = paths["/v2/models/{name}/versions/{version}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert infer["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "InferenceResponse"
    )
    assert {"400", "404", "413", "422", "503"} <= set(infer["responses"])
    load = paths["/v2/repository/models/{name}/load"]["post"]
    assert {"403", "409"} <= set(load["responses"])


def test_admin_load_and_unload_over_http(repository_copy: Path) -> None:
    publish_version(repository_copy, "1", name="second-model")
    settings = Settings(model_repository=repository_copy, admin_api=True)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v2/models/second-model/ready").status_code == 200
        assert (
            client.post(
                "/v2/repository/models/second-model/unload", json={"parameters": {"unload_dependents": False}}
            ).status_code
            == 200
        )
        assert_error(client.get("/v2/models/second-model/ready"), 404, "second-model")
        index = {entry["name"]: entry for entry in client.post("/v2/repository/index").json()}
        assert index["second-model"] == {
            "name": "second-model",
            "version": "1",
            "state": "UNAVAILABLE",
            "reason": "unloaded",
        }
        assert client.post("/v2/repository/index", json={"ready": True}).json() == [index[DEFAULT_MODEL]]
        assert client.post("/v2/repository/models/second-model/load").status_code == 200
        assert client.get("/v2/models/second-model/ready").json() == {"name": "second-model", "ready": True}
        assert_error(client.post(f"/v2/repository/models/{DEFAULT_MODEL}/unload"), 409, "default model")
        assert_error(client.post("/v2/repository/models/nope/load"), 404, "no bundle named 'nope'")
        assert_error(
            client.post("/v2/repository/models/second-model/load", json={"parameters": {"config": "{}"}}),
            400,
            "config",
        )
        (repository_copy / "second-model" / "1" / "purifier.onnx").write_bytes(b"not a graph")
        assert_error(client.post("/v2/repository/models/second-model/load"), 400, "sha256")
        assert client.get("/v2/models/second-model/ready").status_code == 200  # the loaded one keeps serving
