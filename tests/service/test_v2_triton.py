"""The real Open Inference Protocol client, `tritonclient[http]`, against the live service on loopback:
health, metadata, JSON and binary inference, classification, answers equal to `/v1`'s, errors, and a new
version picked up by polling while requests keep coming."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from export.examples import V2_REQUEST, v2_request
from tests.conftest import DEFAULT_MODEL, EXAMPLES, SHIPPED_REPOSITORY, LiveServer, publish_version, serve

OUTPUTS = [
    "probabilities",
    "label",
    "confidence",
    "adversarial",
    "adversarial_score",
    "agreement",
    "reconstruction_z",
]
EXAMPLE_NAMES = ["digit-3.png", "digit-5.png", "digit-7.png", "adversarial-pgd-digit-3.png"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("v2") / "model_repository"
    shutil.copytree(SHIPPED_REPOSITORY, target)
    return target


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[LiveServer]:
    with serve(
        repository.parent,
        DEFENDED_MODEL_REPOSITORY=str(repository),
        DEFENDED_ADMIN_API="true",
        DEFENDED_NOISE_SEED="1234",
        DEFENDED_REPOSITORY_POLL_SECONDS="0.2",
    ) as live:
        yield live


@pytest.fixture(scope="module")
def triton(server: LiveServer) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(server.address) as client:
        yield client


def example_pixels(names: list[str] = EXAMPLE_NAMES) -> np.ndarray:
    return np.stack([np.asarray(Image.open(EXAMPLES / name))[None] for name in names])


def images(array: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput("images", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def text(item: bytes | str) -> str:
    """A BYTES element: tritonclient gives bytes from binary outputs and str from JSON ones."""
    return item.decode() if isinstance(item, bytes) else item


def answers(result: httpclient.InferResult) -> dict[str, list]:
    """Every output as a plain list, to compare across transports."""
    return {
        name: [text(x) if isinstance(x, bytes | str) else x for x in result.as_numpy(name).tolist()]
        for name in OUTPUTS
    }


def test_health_metadata_and_index(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(DEFAULT_MODEL) and triton.is_model_ready(DEFAULT_MODEL, "1")
    assert not triton.is_model_ready(DEFAULT_MODEL, "99") and not triton.is_model_ready("nope")
    assert {"binary_tensor_data", "classification"} <= set(triton.get_server_metadata()["extensions"])
    metadata = triton.get_model_metadata(DEFAULT_MODEL)
    assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [output["name"] for output in metadata["outputs"]] == OUTPUTS
    assert {
        "name": DEFAULT_MODEL,
        "version": "1",
        "state": "READY",
        "reason": "",
    } in triton.get_model_repository_index()


def test_json_and_binary_answers_equal_v1_under_a_fixed_seed(
    server: LiveServer, triton: httpclient.InferenceServerClient
) -> None:
    """Each answer comes from sessions just rebuilt by a load (which restarts their noise stream at
    DEFENDED_NOISE_SEED), warmed up once, then given the same four images: the same process, seed and
    sequence of engine calls, so any difference is a difference between the APIs, not in the noise."""
    pixels = example_pixels()
    triton.load_model(DEFAULT_MODEL)
    files = [("files", (name, (EXAMPLES / name).read_bytes(), "image/png")) for name in EXAMPLE_NAMES]
    v1 = httpx.post(f"{server.url}/v1/models/{DEFAULT_MODEL}/predict", files=files).json()["predictions"]
    triton.load_model(DEFAULT_MODEL)
    binary = triton.infer(DEFAULT_MODEL, [images(pixels, "UINT8", binary=True)])
    triton.load_model(DEFAULT_MODEL)
    requested = [httpclient.InferRequestedOutput(name, binary_data=False) for name in OUTPUTS]
    as_json = triton.infer(
        DEFAULT_MODEL, [images(pixels / np.float32(255), "FP32", False)], outputs=requested
    )
    assert "binary_data_size" not in str(as_json.get_response())
    classes = [str(d) for d in range(10)]
    expected = {
        "probabilities": np.float32([[p["probabilities"][c] for c in classes] for p in v1]).tolist(),
        "label": [p["label"] for p in v1],
        "confidence": np.float32([p["confidence"] for p in v1]).tolist(),
        "adversarial": [p["flags"]["adversarial"] for p in v1],
        "adversarial_score": np.float32(
            [max(p["flags"]["scores"][k] - t for k, t in p["flags"]["thresholds"].items()) for p in v1]
        ).tolist(),
        "agreement": np.float32([p["ensemble"]["agreement"] for p in v1]).tolist(),
        "reconstruction_z": np.float32([p["flags"]["scores"]["reconstruction"] for p in v1]).tolist(),
    }
    assert answers(binary) == expected
    assert answers(as_json) == expected
    assert expected["label"][2] == "7" and expected["adversarial"][3] is True
    # the comparison can fail: without a reload the noise stream has moved on and the numbers change
    again = triton.infer(DEFAULT_MODEL, [images(pixels, "UINT8", binary=True)])
    assert answers(again)["probabilities"] != expected["probabilities"]


def test_classification_extension(triton: httpclient.InferenceServerClient) -> None:
    pixels = example_pixels(["digit-0.png", "digit-9.png"])
    for binary in (True, False):
        outputs = [
            httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=3),
            httpclient.InferRequestedOutput("label", binary_data=binary),
        ]
        result = triton.infer(DEFAULT_MODEL, [images(pixels, "UINT8", binary)], outputs=outputs)
        top3 = result.as_numpy("probabilities")
        assert top3.shape == (2, 3)
        for row, label in zip(top3, result.as_numpy("label"), strict=True):
            value, index, name = text(row[0]).split(":")
            assert index == name == text(label) and 0.5 < float(value) <= 1.0


def test_parameters_and_errors_reach_the_client(triton: httpclient.InferenceServerClient) -> None:
    tensor = images(example_pixels(["digit-2.png"]), "UINT8", binary=True)
    result = triton.infer(
        DEFAULT_MODEL, [tensor], parameters={"samples": 20, "purify": False}, request_id="r7"
    )
    response = result.get_response()
    assert response["parameters"] == {"samples": 20, "purify": False} and response["id"] == "r7"
    assert result.as_numpy("reconstruction_z") is None and result.as_numpy("label").tolist() == [b"2"]
    cases = [
        (lambda: triton.infer("nope", [tensor]), "404", "'nope' is not served"),
        (lambda: triton.infer(DEFAULT_MODEL, [tensor], model_version="99"), "404", "no version '99'"),
        (
            lambda: triton.infer(DEFAULT_MODEL, [tensor], parameters={"samples": 1000}),
            "422",
            "between 1 and 64",
        ),
        (
            lambda: triton.infer(DEFAULT_MODEL, [images(np.zeros((1, 28, 28), np.uint8), "UINT8", True)]),
            "422",
            "the model takes [-1, 1, 28, 28]",
        ),
        (lambda: triton.unload_model(DEFAULT_MODEL), "409", "default model"),
        (lambda: triton.load_model("nope"), "404", "no bundle named 'nope'"),
    ]
    for call, status, message in cases:
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == status and message in info.value.message()


def test_readme_examples_work_as_written(server: LiveServer) -> None:
    """The README's curl request file and tritonclient script, against the live service."""
    request_file = EXAMPLES / V2_REQUEST
    assert json.loads(request_file.read_text()) == v2_request(EXAMPLES / "digit-7.png")  # not stale
    response = httpx.post(f"{server.url}/v2/models/{DEFAULT_MODEL}/infer", content=request_file.read_bytes())
    assert response.status_code == 200, response.text
    tensors = {output["name"]: output["data"] for output in response.json()["outputs"]}
    assert tensors["label"] == ["7"] and tensors["probabilities"][0].endswith(":7:7")
    script = subprocess.run(
        [sys.executable, str(EXAMPLES / "triton_client.py"), "--url", server.address],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = script.stdout.splitlines()
    assert lines[0].startswith(f"{DEFAULT_MODEL} ready: True, versions ")
    assert lines[1].startswith("answered by version ") and lines[1].endswith(" with N = 16")
    assert lines[2].startswith("digit-7.png: label 7, top-3 [")
    # its reconstruction z (measured before any noise is drawn) is far above the threshold: always flagged
    assert lines[3].startswith("adversarial-pgd-digit-3.png: label ") and "adversarial True" in lines[3]


def _metrics(server: LiveServer) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
        for sample in family.samples
    }


def test_new_version_is_picked_up_under_load(
    server: LiveServer, repository: Path, triton: httpclient.InferenceServerClient
) -> None:
    """4 requests always in flight; after 8 answers a new version is renamed into the repository. Polling
    loads it and swaps it in: no request fails, and once the new version has answered, every request sent
    after that answer gets the new version (the swap is atomic and never goes back)."""
    (old,) = triton.get_model_metadata(DEFAULT_MODEL)["versions"]
    new = str(int(old) + 1)
    tensor = images(example_pixels(["digit-7.png"]), "UINT8", binary=True)
    records: list[tuple[bool, str]] = []  # (sent after the new version first answered, version that answered)
    failures: list[str] = []
    with httpclient.InferenceServerClient(server.address, concurrency=4) as client:
        pending: deque = deque()
        deadline = time.monotonic() + 60
        while sum(v == new for _, v in records) < 12 and time.monotonic() < deadline:
            while len(pending) < 4:
                after_new = any(v == new for _, v in records)
                pending.append(
                    (after_new, client.async_infer(DEFAULT_MODEL, [tensor], parameters={"samples": 2}))
                )
            after_new, request = pending.popleft()
            try:
                records.append((after_new, request.get_result().get_response()["model_version"]))
            except InferenceServerException as exc:
                failures.append(str(exc))
            if len(records) == 8:
                publish_version(repository, new)
        for after_new, request in pending:
            records.append((after_new, request.get_result().get_response()["model_version"]))
    assert failures == []
    versions = [version for _, version in records]
    assert versions[:8] == [old] * 8 and versions[-1] == new, versions
    assert all(version == new for after_new, version in records if after_new), records
    assert triton.get_model_metadata(DEFAULT_MODEL)["versions"] == [new]
    index = {
        entry["version"]: entry
        for entry in triton.get_model_repository_index()
        if entry["name"] == DEFAULT_MODEL  # the other shipped bundles are served too
    }
    assert index[new]["state"] == "READY" and index[old]["state"] == "UNAVAILABLE"

    metrics = _metrics(server)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.get((name, tuple(sorted({"model": DEFAULT_MODEL, **labels}.items()))))

    assert sample("defended_model_loads_total", version=new, outcome="loaded") == 1
    assert sample("defended_model_loads_total", version=old, outcome="unloaded") == 1
    info = [
        labels
        for (name, labels) in metrics
        if name == "defended_model_info" and dict(labels)["model"] == DEFAULT_MODEL
    ]
    assert [dict(labels)["version"] for labels in info] == [new]
    assert sample("defended_engine_batch_images_count", version=new) >= 12
    log = server.log()
    assert f"loaded {DEFAULT_MODEL}/{new} from" in log
    assert f"unloaded {DEFAULT_MODEL}/{old}; requests already running on it finish there" in log
    deadline = time.monotonic() + 5
    while f"released {DEFAULT_MODEL}/{old}" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"released {DEFAULT_MODEL}/{old}: its last request has finished" in server.log()
