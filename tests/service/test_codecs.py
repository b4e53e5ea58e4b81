from __future__ import annotations

import base64

import numpy as np
import pytest

from service.codecs import decode_array, decode_image, decode_instance
from service.errors import InvalidInput
from service.manifest import InputSpec
from tests.conftest import encode_image

GREY = InputSpec(channels=1, height=28, width=28, color_mode="L")
RGB = InputSpec(channels=3, height=32, width=32, color_mode="RGB")
LIMIT = 4096 * 4096


def test_grey_png_roundtrip_is_exact() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(28, 28), dtype=np.uint8)
    decoded = decode_image(encode_image(pixels), GREY, max_pixels=LIMIT)
    assert decoded.shape == (1, 28, 28) and decoded.dtype == np.float32
    assert np.array_equal(np.round(decoded[0] * 255).astype(np.uint8), pixels)


def test_other_sizes_and_modes_are_converted() -> None:
    rgb_large = np.zeros((100, 80, 3), dtype=np.uint8)
    rgb_large[20:80, 30:50] = (255, 255, 255)
    decoded = decode_image(encode_image(rgb_large, "JPEG"), GREY, max_pixels=LIMIT)
    assert decoded.shape == (1, 28, 28) and decoded.max() > 0.9 and decoded.min() < 0.1
    grey = np.full((10, 10), 128, dtype=np.uint8)
    as_rgb = decode_image(encode_image(grey), RGB, max_pixels=LIMIT)
    assert as_rgb.shape == (3, 32, 32) and np.allclose(as_rgb, 128 / 255, atol=1e-2)


def test_transparent_pixels_become_black() -> None:
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white but fully transparent ...
    rgba[10:18, 10:18, 3] = 255  # ... except an opaque square
    decoded = decode_image(encode_image(rgba), GREY, max_pixels=LIMIT)[0]
    assert decoded[0, 0] == 0.0 and decoded[12, 12] == 1.0


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(InvalidInput, match="above the limit"):
        decode_image(encode_image(np.zeros((64, 64), np.uint8)), GREY, max_pixels=1000)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not an image", "not a decodable image"),
        (
            encode_image(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))[:300],
            "truncated",
        ),
    ],
    ids=["garbage", "truncated-png"],
)
def test_undecodable_bytes(payload: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_image(payload, GREY, max_pixels=LIMIT)


def test_arrays_in_each_accepted_layout() -> None:
    chw = np.random.default_rng(1).random((3, 32, 32))
    assert np.allclose(decode_array(chw.tolist(), RGB), chw)
    assert np.allclose(decode_array(chw.transpose(1, 2, 0).tolist(), RGB), chw)
    hw = np.random.default_rng(2).random((28, 28))
    assert np.allclose(decode_array(hw.tolist(), GREY)[0], hw)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros((27, 28)).tolist(), "does not match"),
        ([[0.5] * 28] * 27 + [[0.5] * 27], "rectangular"),
        ([["a"] * 28] * 28, "rectangular"),
        (np.full((28, 28), 1.5).tolist(), "outside the input range"),
        (np.full((28, 28), -0.1).tolist(), "outside the input range"),
        ([[float("nan")] * 28] * 28, "NaN"),
        ([[None] * 28] * 28, "NaN"),
    ],
)
def test_bad_arrays(value: list, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_array(value, GREY)


def test_instance_forms() -> None:
    png = encode_image(np.zeros((28, 28), np.uint8))
    text = base64.b64encode(png).decode()
    for item in (text, f"data:image/png;base64,{text}", {"b64": text}):
        assert decode_instance(item, GREY, max_pixels=LIMIT, index=0).shape == (1, 28, 28)
    with pytest.raises(InvalidInput, match="invalid base64"):
        decode_instance("%%%", GREY, max_pixels=LIMIT, index=3)
    with pytest.raises(InvalidInput, match="got int"):
        decode_instance(7, GREY, max_pixels=LIMIT, index=0)
