"""Wire types of the Open Inference Protocol (`specification/protocol/inference_rest.md`) and of Triton's
model-repository extension. Field names and shapes follow the specification, so any v2 client reads them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

ParameterValue = StrictBool | StrictInt | StrictFloat | StrictStr
Parameters = dict[str, ParameterValue]
Dimension = Annotated[StrictInt, Field(ge=0)]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks the batch axis.")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="Versions serving now, highest first.")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(BaseModel):
    name: StrictStr
    shape: list[Dimension]
    datatype: StrictStr
    parameters: Parameters = Field(default_factory=dict)
    data: list[Any] | None = Field(
        default=None,
        description="Row-major tensor contents, flat or nested; absent when `parameters.binary_data_size` "
        "says the tensor follows the JSON as binary data.",
    )


class RequestOutput(BaseModel):
    name: StrictStr
    parameters: Parameters = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    """`parameters` may carry `samples` (ensemble size N), `purify` (bool) and `binary_data_output`."""

    # NOTE: extra top-level fields are tolerated: Triton's own examples send `model_name` in the body.
    model_config = ConfigDict(extra="ignore")

    id: StrictStr | None = None
    parameters: Parameters = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: Parameters = Field(default_factory=dict)
    outputs: list[ResponseOutput]


class RepositoryIndexRequest(BaseModel):
    ready: StrictBool = Field(default=False, description="List only versions ready for inference.")


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str


class RepositoryModelRequest(BaseModel):
    """Body of load and unload; both may be empty. No parameter is acted on (Triton's `config` and
    `unload_dependents` concern model configurations and ensembles this service does not have)."""

    parameters: dict[str, Any] = Field(default_factory=dict)
