"""Wire types of the `/v1` REST API (request and response bodies), kept apart from the logic that fills them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    """JSON body of a predict call. Unknown fields are refused rather than ignored, so that a client
    cannot believe it set something (a noise seed, say) that the service never honours."""

    model_config = ConfigDict(extra="forbid")

    instances: list[Any] = Field(
        description='Images: base64 strings (optionally `data:` URLs), `{"b64": ...}` objects, or nested '
        "numeric arrays already in the model's input range, shaped [C,H,W], [H,W,C] or [H,W] for one channel.",
    )
    samples: int | None = Field(
        default=None, description="Ensemble size N (default and maximum: see /v1/models)."
    )
    purify: bool | None = Field(
        default=None, description="Run adaptive purification first (default: the model's)."
    )
    return_purified: bool = Field(
        default=False, description="Also return the purified image as a base64 PNG."
    )


class EnsembleInfo(BaseModel):
    samples: int
    agreement: float = Field(description="Share of the noisy passes that vote for the answer.")
    entropy: float = Field(description="Predictive entropy (nats) of the mean probabilities.")


class Flags(BaseModel):
    adversarial: bool
    reasons: list[str] = Field(description="Names of the scores that exceed their calibrated threshold.")
    scores: dict[str, float] = Field(description="Every score, oriented so that larger is more suspicious.")
    thresholds: dict[str, float]


class PurificationInfo(BaseModel):
    steps: int = Field(
        description="Purification steps run: T, or 0 when adaptive compute skipped them because the "
        "input's reconstruction error was already low (such inputs would get no gradient). A purifier "
        "that only reforms (its DAE's output is classified) has T = 0."
    )
    reconstruction_error_before: float
    reconstruction_error_after: float
    changed_label: bool = Field(
        description="The ensemble's answer on the raw input differs from the purified one's."
    )
    purified_image: str | None = Field(default=None, description="Base64 PNG, with return_purified=true.")


class ModelRef(BaseModel):
    name: str
    version: str


class Prediction(BaseModel):
    label: str
    class_index: int
    confidence: float = Field(description="Mean ensemble probability of the predicted class.")
    probabilities: dict[str, float]
    ensemble: EnsembleInfo
    flags: Flags
    purification: PurificationInfo | None = Field(
        default=None, description="Present when the input was purified before classification."
    )
    model: ModelRef


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class InputInfo(BaseModel):
    shape: list[int]
    dtype: str
    value_range: tuple[float, float]
    color_mode: str


class ModelInfo(BaseModel):
    name: str
    version: str
    description: str
    default: bool
    input: InputInfo
    classes: list[str]
    samples: dict[str, int]
    rse: dict[str, float | bool] = Field(
        description="Noise levels, and whether odd passes classify the image mirrored left-right."
    )
    purifier: dict[str, Any] | None
    defense: dict[str, Any] | None = Field(
        default=None, description="The training-time defense baked into the weights, if any."
    )
    provider: str
    precision: str = Field(description="Which ensemble graph answers: fp32, or the bundle's fp16 one.")
    calibration: dict[str, Any]
    metrics: dict[str, Any]


class ModelList(BaseModel):
    models: list[ModelInfo]
    failed: dict[str, str] = Field(description="Bundles found but not served, with the reason.")


class ErrorBody(BaseModel):
    error: str
    code: str
