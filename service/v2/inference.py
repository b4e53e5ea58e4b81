"""v2 inference on the data plane: request tensors -> images and options -> `DataPlane.predict` -> output
tensors, with Triton's classification extension on `probabilities`.

Every output is read off the `Prediction`s that `/v1` returns too, so the two APIs answer from one
computation and cannot drift apart in what a field means.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Response

from service.codecs import check_range, scale_pixels
from service.dataplane import DataPlane
from service.errors import InvalidInput, MalformedRequest
from service.registry import LoadedModel
from service.schemas import Prediction
from service.scoring import RECONSTRUCTION
from service.v2.schemas import InferenceRequest, ModelMetadata, Parameters, RequestOutput, TensorMetadata
from service.v2.tensors import (
    BINARY_DATA_SIZE,
    NUMERIC_TYPES,
    BinaryReader,
    decode_tensor,
    output_tensor,
    parse_request,
    render,
)

IMAGES = "images"
PLATFORM = "onnx_onnxv1"
INPUT_TYPES = ("FP32", "UINT8")
"""FP32 values in the model's input range, or UINT8 pixels (0-255) scaled exactly as uploaded images are."""


def adversarial_score(prediction: Prediction) -> float:
    """The largest margin by which a calibrated score exceeds its threshold (score - threshold): positive
    exactly when `adversarial` is true, and the further above 0 the more clearly."""
    flags = prediction.flags
    margins = [flags.scores[key] - limit for key, limit in flags.thresholds.items() if key in flags.scores]
    return max(margins, default=0.0)


@dataclass(frozen=True)
class OutputSpec:
    datatype: str
    value: Callable[[Prediction, list[str]], Any]
    """The per-image value, given the prediction and the model's classes."""
    per_class: bool = False
    needs_purifier: bool = False


OUTPUTS: dict[str, OutputSpec] = {
    "probabilities": OutputSpec(
        "FP32", lambda p, classes: [p.probabilities[c] for c in classes], per_class=True
    ),
    "label": OutputSpec("BYTES", lambda p, _: p.label),
    "confidence": OutputSpec("FP32", lambda p, _: p.confidence),
    "adversarial": OutputSpec("BOOL", lambda p, _: p.flags.adversarial),
    "adversarial_score": OutputSpec("FP32", lambda p, _: adversarial_score(p)),
    "agreement": OutputSpec("FP32", lambda p, _: p.ensemble.agreement),
    "reconstruction_z": OutputSpec("FP32", lambda p, _: p.flags.scores[RECONSTRUCTION], needs_purifier=True),
}
CLASSIFIABLE = "probabilities"


def model_metadata(model: LoadedModel, versions: list[str]) -> ModelMetadata:
    classes = len(model.manifest.classes)
    return ModelMetadata(
        name=model.name,
        versions=versions,
        platform=PLATFORM,
        inputs=[TensorMetadata(name=IMAGES, datatype="FP32", shape=[-1, *model.manifest.input.shape])],
        outputs=[
            TensorMetadata(name=name, datatype=spec.datatype, shape=[-1, classes] if spec.per_class else [-1])
            for name, spec in OUTPUTS.items()
            if model.purifier is not None or not spec.needs_purifier
        ],
    )


def checked_parameters(where: str, parameters: Parameters, accepted: dict[str, type]) -> dict[str, Any]:
    """Refuse unknown parameters and values of the wrong JSON type (a typo must not silently do nothing)."""
    unknown = sorted(set(parameters) - set(accepted))
    if unknown:
        raise MalformedRequest(f"{where}: unknown parameter(s) {unknown}; accepted: {sorted(accepted)}")
    for key, value in parameters.items():
        wanted = accepted[key]
        if isinstance(value, bool) != (wanted is bool) or not isinstance(value, wanted):
            kind = "true or false" if wanted is bool else "an integer"
            raise MalformedRequest(f"{where}: parameter '{key}' must be {kind}, got {value!r}")
    return dict(parameters)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0
    """Top-k classes as "value:index:label" strings instead of the tensor (0: the tensor itself)."""


def requested_outputs(
    model: LoadedModel, outputs: list[RequestOutput] | None, binary_default: bool, purify: bool
) -> list[RequestedOutput]:
    available = [name for name, spec in OUTPUTS.items() if purify or not spec.needs_purifier]
    if not outputs:
        return [RequestedOutput(name, binary_default) for name in available]
    names = [output.name for output in outputs]
    if len(set(names)) != len(names):
        raise MalformedRequest(f"outputs {names} name one tensor more than once")
    requested = []
    for output in outputs:
        if output.name not in OUTPUTS:
            raise InvalidInput(
                f"model '{model.name}' has no output '{output.name}' (outputs: {', '.join(OUTPUTS)})"
            )
        if output.name not in available:
            raise InvalidInput(f"output '{output.name}' comes from the purifier; it needs purify=true")
        parameters = checked_parameters(
            f"output '{output.name}'", output.parameters, {"binary_data": bool, "classification": int}
        )
        top_k = parameters.get("classification", 0)
        if top_k and output.name != CLASSIFIABLE:
            raise InvalidInput(f"classification applies to output '{CLASSIFIABLE}' only, not '{output.name}'")
        if top_k < 0:
            raise InvalidInput(f"classification must be a positive class count, got {top_k}")
        requested.append(RequestedOutput(output.name, parameters.get("binary_data", binary_default), top_k))
    return requested


def read_images(
    model: LoadedModel, request: InferenceRequest, binary: bytes, check_count: Callable[[int], None]
) -> np.ndarray:
    """The request's one input -> float32 [B, C, H, W] in the model's input range."""
    names = [tensor.name for tensor in request.inputs]
    if names != [IMAGES]:
        raise InvalidInput(f"model '{model.name}' takes one input '{IMAGES}', got {names}")
    (tensor,) = request.inputs
    checked_parameters(f"input '{IMAGES}'", tensor.parameters, {BINARY_DATA_SIZE: int})
    spec = model.manifest.input
    if tensor.datatype not in INPUT_TYPES:
        raise InvalidInput(
            f"input '{IMAGES}' must be FP32 (values in {list(spec.value_range)}) or UINT8 (pixels 0-255), "
            f"got {tensor.datatype}"
        )
    if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != spec.shape:
        raise InvalidInput(f"input '{IMAGES}' has shape {tensor.shape}; the model takes {[-1, *spec.shape]}")
    check_count(tensor.shape[0])
    reader = BinaryReader(binary)
    array = decode_tensor(tensor, reader)
    reader.finish()
    if tensor.datatype == "UINT8":
        return scale_pixels(array, spec)
    return check_range(array, spec, f"input '{IMAGES}'")


def top_k(probabilities: np.ndarray, classes: list[str], k: int) -> np.ndarray:
    """[B, K] -> [B, min(k, K)] strings "value:index:label", most probable first (Triton's format)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return np.array(
        [
            [f"{row[i]:f}:{i}:{classes[i]}" for i in indices]
            for row, indices in zip(probabilities, order, strict=True)
        ],
        dtype=object,
    )


def encode_outputs(
    model: LoadedModel, predictions: list[Prediction], requested: list[RequestedOutput]
) -> tuple[list[dict[str, Any]], list[bytes]]:
    classes = model.manifest.classes
    tensors, buffers = [], []
    for output in requested:
        spec = OUTPUTS[output.name]
        values = [spec.value(prediction, classes) for prediction in predictions]
        if output.classification:
            array, datatype = top_k(np.asarray(values), classes, output.classification), "BYTES"
        else:
            dtype = object if spec.datatype == "BYTES" else NUMERIC_TYPES[spec.datatype]
            array, datatype = np.asarray(values, dtype=dtype), spec.datatype
        tensor, raw = output_tensor(output.name, array, datatype, output.binary)
        tensors.append(tensor)
        if raw is not None:
            buffers.append(raw)
    return tensors, buffers


async def infer(dataplane: DataPlane, model: LoadedModel, body: bytes, header_length: str | None) -> Response:
    request, binary = await asyncio.to_thread(parse_request, body, header_length)
    options = checked_parameters(
        "request", request.parameters, {"samples": int, "purify": bool, "binary_data_output": bool}
    )
    samples = dataplane.resolve_samples(model, options.get("samples"))
    purify = dataplane.resolve_purify(model, options.get("purify"))
    requested = requested_outputs(model, request.outputs, options.get("binary_data_output", False), purify)
    images = await asyncio.to_thread(read_images, model, request, binary, dataplane.check_count)
    predictions = await dataplane.predict(model, images, samples, purify)
    outputs, buffers = encode_outputs(model, predictions, requested)
    response: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "parameters": {"samples": samples, "purify": purify},
        "outputs": outputs,
    }
    if request.id is not None:
        response["id"] = request.id
    return render(response, buffers)
