"""Turn what clients send (encoded images, base64 strings, nested numeric arrays) into model input.

Every decoder returns float32 [C, H, W] in the manifest's value range, or raises `InvalidInput` naming the
instance and the problem. Images of another size or mode are converted to the model's input spec; numeric
arrays are not resized (they claim to already be model input) and must match it exactly.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import InvalidInput
from service.manifest import InputSpec

ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "WEBP"})
_RANGE_TOLERANCE = 1e-6


def decode_image(payload: bytes, spec: InputSpec, *, max_pixels: int, index: int = 0) -> np.ndarray:
    """Encoded image bytes -> float32 [C, H, W]; the pixel count is checked from the header before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(payload), formats=sorted(ACCEPTED_FORMATS))
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidInput(
                    f"instance {index}: image is {width}x{height} pixels, above the limit of {max_pixels}",
                    instance=index,
                )
            image.load()
    except InvalidInput:
        raise
    except UnidentifiedImageError as exc:
        raise InvalidInput(
            f"instance {index}: not a decodable image ({', '.join(sorted(ACCEPTED_FORMATS))} accepted)",
            instance=index,
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(
            f"instance {index}: not a decodable image ({', '.join(sorted(ACCEPTED_FORMATS))} accepted): {exc}",
            instance=index,
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"instance {index}: corrupt or truncated image: {exc}", instance=index) from exc
    return _image_to_array(image, spec)


def _image_to_array(image: Image.Image, spec: InputSpec) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # NOTE: transparent pixels become black, the background of MNIST-style digits.
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    image = image.convert(spec.color_mode)
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.uint8)
    return scale_pixels(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1), spec)


def scale_pixels(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 pixels (any layout) -> float32 in the input range, the same way for every transport."""
    low, high = spec.value_range
    return (low + (pixels.astype(np.float32) / 255.0) * (high - low)).astype(np.float32)


def decode_base64_image(text: str, spec: InputSpec, *, max_pixels: int, index: int = 0) -> np.ndarray:
    """A base64 string (optionally a `data:image/...;base64,` URL) holding an encoded image."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        payload = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"instance {index}: invalid base64: {exc}", instance=index) from exc
    return decode_image(payload, spec, max_pixels=max_pixels, index=index)


def decode_array(value: Any, spec: InputSpec, *, index: int = 0) -> np.ndarray:
    """A nested numeric array already in model space: [C, H, W], [H, W, C], or [H, W] for one channel."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            f"instance {index}: not a rectangular numeric array: {exc}", instance=index
        ) from exc
    channels, height, width = spec.shape
    if array.shape == (channels, height, width):
        pass
    elif array.shape == (height, width, channels):
        array = array.transpose(2, 0, 1)
    elif channels == 1 and array.shape == (height, width):
        array = array[None]
    else:
        raise InvalidInput(
            f"instance {index}: array shape {list(array.shape)} does not match the model input "
            f"{[channels, height, width]} (also accepted: {[height, width, channels]}"
            + (f" or {[height, width]})" if channels == 1 else ")"),
            instance=index,
        )
    return check_range(array, spec, f"instance {index}", instance=index)


def check_range(array: np.ndarray, spec: InputSpec, what: str, **detail: int) -> np.ndarray:
    """Values claimed to be model input -> float32, refusing NaN/inf and values outside the input range
    (beyond float rounding), which would put the classifier outside anything it was trained on."""
    if not np.isfinite(array).all():
        raise InvalidInput(f"{what}: array holds NaN or infinite values", **detail)
    low, high = spec.value_range
    if array.min() < low - _RANGE_TOLERANCE or array.max() > high + _RANGE_TOLERANCE:
        raise InvalidInput(
            f"{what}: values span [{array.min():.4g}, {array.max():.4g}], outside the input range "
            f"[{low}, {high}]",
            **detail,
        )
    return np.clip(array, low, high).astype(np.float32)


def decode_instance(item: Any, spec: InputSpec, *, max_pixels: int, index: int) -> np.ndarray:
    """One JSON instance: a base64 string, `{"b64": "..."}`, or a nested numeric array."""
    if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
        item = item["b64"]
    if isinstance(item, str):
        return decode_base64_image(item, spec, max_pixels=max_pixels, index=index)
    if isinstance(item, list):
        return decode_array(item, spec, index=index)
    raise InvalidInput(
        f'instance {index}: expected a base64 image string, {{"b64": ...}} or a nested numeric array, '
        f"got {type(item).__name__}",
        instance=index,
    )


def encode_png(image: np.ndarray, spec: InputSpec) -> str:
    """float [C,H,W] in the input range -> base64 PNG (values outside the range are clipped for display)."""
    low, high = spec.value_range
    scaled = np.clip((image - low) / (high - low), 0.0, 1.0)
    pixels = np.round(scaled * 255).astype(np.uint8)
    pixels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
