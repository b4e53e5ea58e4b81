"""The REST API through the real app (ASGI, lifespan, onnxruntime), with real images."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DEFAULT_MODEL, EXAMPLES, encode_image

PREDICTION_FIELDS = {
    "label", "class_index", "confidence", "probabilities", "ensemble", "flags", "purification", "model",
}  # fmt: skip


def example_bytes(digit: int) -> bytes:
    return (EXAMPLES / f"digit-{digit}.png").read_bytes()


def check_prediction(prediction: dict, samples: int, purified: bool = True) -> None:
    assert set(prediction) == PREDICTION_FIELDS
    assert prediction["label"] == str(prediction["class_index"])
    assert prediction["confidence"] == pytest.approx(max(prediction["probabilities"].values()))
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert prediction["ensemble"]["samples"] == samples
    assert 0.0 <= prediction["ensemble"]["agreement"] <= 1.0 and prediction["ensemble"]["entropy"] >= 0.0
    flags = prediction["flags"]
    purification_scores = {"reconstruction", "purification_changed_label"}
    assert set(flags["scores"]) == {"disagreement", "entropy"} | (purification_scores if purified else set())
    assert flags["adversarial"] == bool(flags["reasons"])
    assert set(flags["reasons"]) <= set(flags["scores"]) & set(flags["thresholds"])
    assert prediction["model"] == {"name": DEFAULT_MODEL, "version": "1"}
    purification = prediction["purification"]
    if not purified:
        assert purification is None
        return
    # adaptive compute (the default): inputs at or below the clean mean error skip the steps
    assert purification["steps"] == (13 if flags["scores"]["reconstruction"] > 0 else 0)
    assert (
        purification["reconstruction_error_before"] >= 0 and purification["reconstruction_error_after"] >= 0
    )
    assert purification["changed_label"] == bool(flags["scores"]["purification_changed_label"])


def test_multipart_upload_of_several_examples(client: TestClient) -> None:
    files = [("files", (f"digit-{d}.png", example_bytes(d), "image/png")) for d in (3, 7, 0)]
    response = client.post("/v1/predict", files=files)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == ["3", "7", "0"]
    for prediction in predictions:
        check_prediction(prediction, samples=10)


def test_json_base64_and_arrays_with_samples(client: TestClient) -> None:
    encoded = base64.b64encode(example_bytes(4)).decode()
    pixels = np.zeros((28, 28))
    pixels[4:24, 13:15] = 1.0  # a vertical bar: a "1"
    body = {"instances": [encoded, {"b64": encoded}, pixels.tolist()], "samples": 24}
    response = client.post(f"/v1/models/{DEFAULT_MODEL}/predict", json=body)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions[:2]] == ["4", "4"]
    assert predictions[2]["label"] == "1"
    for prediction in predictions:
        check_prediction(prediction, samples=24)


def test_samples_from_query_and_form(client: TestClient) -> None:
    files = [("files", ("d.png", example_bytes(2), "image/png"))]
    assert (
        client.post("/v1/predict?samples=3", files=files).json()["predictions"][0]["ensemble"]["samples"] == 3
    )
    answer = client.post("/v1/predict", files=files, data={"samples": "5"}).json()
    assert answer["predictions"][0]["ensemble"]["samples"] == 5


def test_rgb_jpeg_of_another_size_is_converted(client: TestClient) -> None:
    grey = np.asarray(Image.open(EXAMPLES / "digit-6.png"))
    big_rgb = np.repeat(np.kron(grey, np.ones((4, 4), dtype=np.uint8))[..., None], 3, axis=2)
    response = client.post(
        "/v1/predict", files=[("files", ("d.jpg", encode_image(big_rgb, "JPEG"), "image/jpeg"))]
    )
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == "6"


def test_models_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").status_code == 200
    listing = client.get("/v1/models").json()
    (model,) = listing["models"]
    assert model["name"] == DEFAULT_MODEL and model["default"] and model["provider"] == "CPUExecutionProvider"
    assert model["input"]["shape"] == [1, 28, 28] and model["classes"] == [str(d) for d in range(10)]
    assert model["samples"] == {"default": 10, "max": 64}
    # digits are not mirror-symmetric: no mirrored passes
    assert model["rse"] == {"sigma_init": 0.2, "sigma_inner": 0.1, "mirrored_passes": False}
    assert model["purifier"]["steps"] == 13 and set(model["calibration"]["thresholds"]) == {
        "reconstruction", "disagreement", "purification_changed_label",
    }  # fmt: skip
    assert client.get(f"/v1/models/{DEFAULT_MODEL}").json() == model


def _metric_samples(client: TestClient) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_parse_and_move(client: TestClient) -> None:
    before = _metric_samples(client)
    files = [
        ("files", ("d.png", example_bytes(8), "image/png")),
        ("files", ("e.png", example_bytes(8), "image/png")),
    ]
    assert client.post("/v1/predict", files=files).status_code == 200
    assert client.post("/v1/predict", json={"instances": ["@@"]}).status_code == 422
    after = _metric_samples(client)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    model = {"model": DEFAULT_MODEL, "version": "1"}
    assert moved("defended_http_requests_total", route="/v1/predict", method="POST", status="200") == 1
    assert moved("defended_http_requests_total", route="/v1/predict", method="POST", status="422") == 1
    assert moved("defended_http_request_duration_seconds_count", route="/v1/predict", method="POST") == 2
    assert moved("defended_engine_batch_images_count", **model) == 1
    assert moved("defended_engine_batch_images_sum", **model) == 2
    assert moved("defended_ensemble_agreement_count", **model) == 2
    assert moved("defended_predictions_total", label="8", **model) == 2
    assert moved("defended_images_total", **model) == 2
    assert (
        after[
            (
                "defended_model_info",
                (
                    ("default_samples", "10"),
                    ("model", DEFAULT_MODEL),
                    ("provider", "CPUExecutionProvider"),
                    ("version", "1"),
                ),
            )
        ]
        == 1
    )
    flagged_any = moved("defended_flagged_total", reason="any", **model)
    assert flagged_any in (0, 1, 2)


def test_flagged_counter_counts_reasons(client: TestClient) -> None:
    """A blank image is far from every digit: the ensemble disagrees and the flag fires and is counted."""
    blank = np.full((28, 28), 0.5).tolist()
    before = _metric_samples(client)
    predictions = client.post("/v1/predict", json={"instances": [blank] * 4, "samples": 30}).json()[
        "predictions"
    ]
    after = _metric_samples(client)
    fired = sum(p["flags"]["adversarial"] for p in predictions)
    key = ("defended_flagged_total", (("model", DEFAULT_MODEL), ("reason", "any"), ("version", "1")))
    assert after.get(key, 0) - before.get(key, 0) == fired


def test_purify_false_skips_the_purifier(client: TestClient) -> None:
    before = _metric_samples(client)
    files = [("files", ("d.png", example_bytes(1), "image/png"))]
    response = client.post("/v1/predict?purify=false", files=files)
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    check_prediction(prediction, samples=10, purified=False)
    after = _metric_samples(client)

    def calls(graph: str) -> float:
        key = (
            "defended_engine_duration_seconds_count",
            (("graph", graph), ("model", DEFAULT_MODEL), ("version", "1")),
        )
        return after.get(key, 0) - before.get(key, 0)

    assert calls("purifier") == 0 and calls("ensemble") == 1


def test_return_purified_gives_the_image_the_classifier_saw(client: TestClient) -> None:
    body = {"instances": [base64.b64encode(example_bytes(9)).decode()], "return_purified": True}
    (prediction,) = client.post("/v1/predict", json=body).json()["predictions"]
    check_prediction(prediction, samples=10)
    png = base64.b64decode(prediction["purification"]["purified_image"])
    purified = np.asarray(Image.open(io.BytesIO(png)))
    original = np.asarray(Image.open(EXAMPLES / "digit-9.png"))
    assert purified.shape == original.shape == (28, 28)
    # a clean digit is already near the DAE's manifold: purification moves it only a little
    assert np.abs(purified.astype(float) - original).mean() < 8


def test_shipped_adversarial_example_is_flagged(client: TestClient) -> None:
    """The README's curl: a PGD example made by ART against the undefended twin is flagged, with reasons."""
    (path,) = EXAMPLES.glob("adversarial-pgd-digit-*.png")
    before = _metric_samples(client)
    response = client.post("/v1/predict", files=[("files", (path.name, path.read_bytes(), "image/png"))])
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    check_prediction(prediction, samples=10)
    flags = prediction["flags"]
    assert flags["adversarial"] is True and "reconstruction" in flags["reasons"]
    assert flags["scores"]["reconstruction"] > flags["thresholds"]["reconstruction"]
    after = _metric_samples(client)
    model = (("model", DEFAULT_MODEL), ("version", "1"))
    z_count = ("defended_reconstruction_zscore_count", model)
    assert after[z_count] - before.get(z_count, 0) == 1
    reason = ("defended_flagged_total", (model[0], ("reason", "reconstruction"), model[1]))
    assert after[reason] - before.get(reason, 0) == 1


def test_service_import_leaves_torch_out() -> None:
    """Nor the packages upstream of the bundle: models, export, and the evaluation harness."""
    import subprocess
    import sys

    code = (
        "import sys, service.app, service.__main__; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'models', 'export', 'evaluation'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
