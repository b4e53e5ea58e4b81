"""The v2 tensor codec against tritonclient's own serialisers: what one side writes the other reads."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from service.errors import MalformedRequest
from service.v2.schemas import RequestInput
from service.v2.tensors import BinaryReader, decode_tensor, encode_tensor, output_tensor


@pytest.mark.parametrize(
    ("datatype", "array"),
    [
        ("BOOL", np.array([[True, False, True]])),
        ("INT16", np.array([[-3, 0, 300]], dtype=np.int16)),
        ("UINT8", np.array([[0, 128, 255]], dtype=np.uint8)),
        ("FP64", np.array([[0.25, -1.5, 3.0]])),
    ],
)
def test_json_and_binary_decode_to_the_same_array(datatype: str, array: np.ndarray) -> None:
    as_json = RequestInput(name="x", shape=[1, 3], datatype=datatype, data=array.tolist())
    decoded = decode_tensor(as_json, BinaryReader(b""))
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    as_binary = RequestInput(
        name="x", shape=[1, 3], datatype=datatype, parameters={"binary_data_size": len(raw)}
    )
    reader = BinaryReader(raw + b"tail")
    assert np.array_equal(decoded, array) and np.array_equal(decode_tensor(as_binary, reader), array)
    with pytest.raises(MalformedRequest, match="4 bytes of binary data follow the JSON but no input claims"):
        reader.finish()


def test_unknown_datatype_and_wrong_json_kinds() -> None:
    with pytest.raises(MalformedRequest, match="not a numeric type"):
        decode_tensor(RequestInput(name="x", shape=[1], datatype="FP8", data=[1]), BinaryReader(b""))
    with pytest.raises(MalformedRequest, match="BOOL data must be booleans"):
        decode_tensor(RequestInput(name="x", shape=[1], datatype="BOOL", data=[1]), BinaryReader(b""))
    with pytest.raises(MalformedRequest, match="INT16 range"):
        decode_tensor(RequestInput(name="x", shape=[1], datatype="INT16", data=[40000]), BinaryReader(b""))


def test_bytes_and_bool_outputs_match_tritonclient() -> None:
    labels = np.array(["7", "3", "ünïcode"], dtype=object)
    assert encode_tensor(labels, "BYTES") == serialize_byte_tensor(labels).item()
    tensor, raw = output_tensor("label", labels, "BYTES", binary=True)
    assert tensor == {
        "name": "label",
        "datatype": "BYTES",
        "shape": [3],
        "parameters": {"binary_data_size": len(raw)},
    }
    assert [item.decode() for item in deserialize_bytes_tensor(raw)] == labels.tolist()
    tensor, raw = output_tensor("adversarial", np.array([True, False]), "BOOL", binary=True)
    assert raw == b"\x01\x00" and tensor["parameters"] == {"binary_data_size": 2}
    tensor, raw = output_tensor("confidence", np.array([0.5, 0.25], dtype=np.float32), "FP32", binary=False)
    assert raw is None and tensor["data"] == [0.5, 0.25]
