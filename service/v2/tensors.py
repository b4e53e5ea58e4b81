"""Open Inference Protocol tensors <-> numpy, as JSON `data` or in Triton's binary tensor extension.

Binary framing (Triton `extension_binary_data.md`): the body is the JSON object, whose length the
`Inference-Header-Content-Length` header gives, followed by the raw tensors in the order of the JSON's
inputs (or outputs), each `parameters.binary_data_size` bytes long: little-endian, row-major, no padding;
a BOOL is one byte and a BYTES element is a 4-byte little-endian length followed by the bytes.

Everything a client can get wrong here is a malformed request (400): the body does not frame, a tensor's
data does not match its own shape or datatype. Whether a well-formed tensor suits the model is decided by
the caller.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
from fastapi import Response
from pydantic import ValidationError

from service.errors import MalformedRequest
from service.v2.schemas import InferenceRequest, RequestInput

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_DATA_SIZE = "binary_data_size"

NUMERIC_TYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in {
        "BOOL": "?",
        "UINT8": "<u1",
        "UINT16": "<u2",
        "UINT32": "<u4",
        "UINT64": "<u8",
        "INT8": "<i1",
        "INT16": "<i2",
        "INT32": "<i4",
        "INT64": "<i8",
        "FP16": "<f2",
        "FP32": "<f4",
        "FP64": "<f8",
    }.items()
}
_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}
"""numpy kind of a datatype -> kinds of parsed JSON data it accepts (ints are valid floats, not the reverse)."""


def problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """An infer body -> the request object and the binary data that follows its JSON (empty without any)."""
    json_part, binary = body, b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise MalformedRequest(
                f"{HEADER_LENGTH} is {header_length!r}; it must be the JSON's length in bytes, at most the "
                f"body's {len(body)}"
            )
        json_part, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        raw = json.loads(json_part)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedRequest(f"inference request is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise MalformedRequest('inference request must be a JSON object like {"inputs": [...]}')
    try:
        return InferenceRequest.model_validate(raw), binary
    except ValidationError as exc:
        raise MalformedRequest(f"invalid inference request: {problems(exc)}") from None


class BinaryReader:
    """Hands out the binary tensors of one request in order, and notices bytes left over."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.offset = 0

    def take(self, name: str, size: int) -> memoryview:
        chunk = self.data[self.offset : self.offset + size]
        if len(chunk) < size:
            raise MalformedRequest(
                f"input '{name}' declares {size} bytes of binary data; only {len(chunk)} follow the JSON"
            )
        self.offset += size
        return chunk

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise MalformedRequest(
                f"{len(self.data) - self.offset} bytes of binary data follow the JSON but no input claims them"
            )


def decode_tensor(tensor: RequestInput, reader: BinaryReader) -> np.ndarray:
    """A request input -> an array of its datatype and shape, from JSON `data` or from binary data."""
    dtype = NUMERIC_TYPES.get(tensor.datatype)
    if dtype is None:
        raise MalformedRequest(
            f"input '{tensor.name}': datatype {tensor.datatype!r} is not a numeric type this server reads "
            f"({', '.join(NUMERIC_TYPES)})"
        )
    count = math.prod(tensor.shape)
    size = tensor.parameters.get(BINARY_DATA_SIZE)
    if size is None:
        if tensor.data is None:
            raise MalformedRequest(
                f"input '{tensor.name}' has neither data nor parameters.{BINARY_DATA_SIZE}"
            )
        return _from_json(tensor, dtype, count)
    if tensor.data is not None:
        raise MalformedRequest(f"input '{tensor.name}' has both data and parameters.{BINARY_DATA_SIZE}")
    if isinstance(size, bool) or not isinstance(size, int) or size != count * dtype.itemsize:
        raise MalformedRequest(
            f"input '{tensor.name}': {BINARY_DATA_SIZE} is {size!r}, but shape {tensor.shape} of "
            f"{tensor.datatype} takes {count * dtype.itemsize} bytes"
        )
    return np.frombuffer(reader.take(tensor.name, size), dtype=dtype).reshape(tensor.shape)


def _from_json(tensor: RequestInput, dtype: np.dtype, count: int) -> np.ndarray:
    what = f"input '{tensor.name}'"
    try:
        array = np.asarray(tensor.data)
    except (ValueError, TypeError) as exc:
        raise MalformedRequest(f"{what}: data is not a rectangular array: {exc}") from None
    if array.size != count:
        raise MalformedRequest(f"{what}: data holds {array.size} values, shape {tensor.shape} needs {count}")
    if count and array.dtype.kind not in _JSON_KINDS[dtype.kind]:
        expected = {"b": "booleans", "u": "integers", "i": "integers", "f": "numbers"}[dtype.kind]
        got = {"b": "booleans", "i": "integers", "f": "fractional numbers", "U": "strings"}
        raise MalformedRequest(
            f"{what}: {tensor.datatype} data must be {expected}, got "
            f"{got.get(array.dtype.kind, 'mixed or non-numeric values')}"
        )
    if count and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise MalformedRequest(
                f"{what}: values outside the {tensor.datatype} range [{info.min}, {info.max}]"
            )
    return array.astype(dtype).reshape(tensor.shape)


def encode_tensor(array: np.ndarray, datatype: str) -> bytes:
    """An output array -> its binary form (BYTES arrays hold str)."""
    if datatype == "BYTES":
        encoded = [str(item).encode() for item in array.ravel()]
        return b"".join(struct.pack("<I", len(item)) + item for item in encoded)
    return np.ascontiguousarray(array, dtype=NUMERIC_TYPES[datatype]).tobytes()


def output_tensor(
    name: str, array: np.ndarray, datatype: str, binary: bool
) -> tuple[dict[str, Any], bytes | None]:
    """One response output: JSON with `data`, or JSON with `binary_data_size` plus the bytes to append."""
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if not binary:
        tensor["data"] = array.ravel().tolist()
        return tensor, None
    raw = encode_tensor(array, datatype)
    tensor["parameters"] = {BINARY_DATA_SIZE: len(raw)}
    return tensor, raw


def render(response: dict[str, Any], buffers: list[bytes]) -> Response:
    """The response body: plain JSON, or JSON + the binary outputs' bytes with the header that says where
    the JSON ends."""
    header = json.dumps(response, allow_nan=False).encode()
    if not buffers:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(buffers),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )
