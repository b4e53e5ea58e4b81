"""REST routes of the Open Inference Protocol and Triton's model-repository extension. Thin: each handler
reads the transport and calls the data plane, the registry or `service.v2.inference`."""

from __future__ import annotations

import asyncio
import json
from importlib.metadata import version as package_version
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ValidationError

from service.dataplane import DataPlane
from service.errors import AdminDisabled, MalformedRequest, NotReady, UnsupportedMediaType
from service.rest import ERRORS
from service.v2.inference import infer, model_metadata
from service.v2.schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    RepositoryIndexEntry,
    RepositoryIndexRequest,
    RepositoryModelRequest,
    ServerLive,
    ServerMetadata,
    ServerReady,
)
from service.v2.tensors import HEADER_LENGTH, problems

SERVER_NAME = "defended-inference"
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository"]
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": InferenceRequest.model_json_schema()},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"Binary tensor extension: the JSON request (its length in the {HEADER_LENGTH} "
                "header), then each input with parameters.binary_data_size, in order.",
            },
        },
    }
}
ADMIN_ERRORS = {**ERRORS, 403: ERRORS[400], 409: ERRORS[400]}


Body = TypeVar("Body", bound=BaseModel)


async def _json_body(request: Request, schema: type[Body]) -> Body:
    """An optional JSON body (tritonclient sends none for the index) validated against `schema`."""
    raw = await request.body()
    try:
        return schema.model_validate(json.loads(raw) if raw.strip() else {})
    except (ValueError, RecursionError) as exc:
        detail = problems(exc) if isinstance(exc, ValidationError) else f"not valid JSON: {exc}"
        raise MalformedRequest(f"invalid request body: {detail}") from None


class V2Endpoints:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self.registry = dataplane.registry

    async def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(name=SERVER_NAME, version=package_version(SERVER_NAME), extensions=EXTENSIONS)

    async def live(self) -> ServerLive:
        return ServerLive(live=True)

    async def ready(self) -> ServerReady:
        if not self.dataplane.ready:
            raise NotReady("models are still loading or the service is shutting down")
        return ServerReady(ready=True)

    async def model_metadata(self, name: str) -> ModelMetadata:
        return await self.version_metadata(name, None)

    async def version_metadata(self, name: str, version: str | None) -> ModelMetadata:
        return model_metadata(self.dataplane.model(name, version), self.registry.versions(name))

    async def model_ready(self, name: str) -> ModelReady:
        return await self.version_ready(name, None)

    async def version_ready(self, name: str, version: str | None) -> ModelReady:
        return ModelReady(name=self.dataplane.model(name, version).name, ready=True)

    async def infer(self, name: str, request: Request) -> Response:
        return await self.version_infer(name, None, request)

    async def version_infer(self, name: str, version: str | None, request: Request) -> Response:
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise UnsupportedMediaType(
                f"Content-Encoding '{encoding}' is not accepted; send the body uncompressed"
            )
        model = self.dataplane.model(name, version)
        return await infer(self.dataplane, model, await request.body(), request.headers.get(HEADER_LENGTH))

    async def repository_index(self, request: Request) -> list[RepositoryIndexEntry]:
        body = await _json_body(request, RepositoryIndexRequest)
        entries = [
            RepositoryIndexEntry.model_validate(entry, from_attributes=True)
            for entry in self.registry.index()
        ]
        return [entry for entry in entries if entry.state == "READY" or not body.ready]

    async def load(self, name: str, request: Request) -> Response:
        await self._admin(request, accepted=set())
        await asyncio.to_thread(self.registry.load, name)
        return Response(status_code=200)

    async def unload(self, name: str, request: Request) -> Response:
        await self._admin(request, accepted={"unload_dependents"})
        await asyncio.to_thread(self.registry.unload, name)
        return Response(status_code=200)

    async def _admin(self, request: Request, accepted: set[str]) -> None:
        if not self.dataplane.settings.admin_api:
            raise AdminDisabled(
                "loading and unloading models is off; start the service with DEFENDED_ADMIN_API=true"
            )
        if not self.dataplane.ready:
            raise NotReady("models are still loading")
        body = await _json_body(request, RepositoryModelRequest)
        unknown = sorted(set(body.parameters) - accepted)
        if unknown:
            raise MalformedRequest(
                f"parameter(s) {unknown} not supported here; bundles load from the repository"
            )


def build_v2_router(dataplane: DataPlane) -> APIRouter:
    endpoints = V2Endpoints(dataplane)
    router = APIRouter(prefix="/v2", tags=["v2"], responses=ERRORS)
    router.add_api_route("", endpoints.server_metadata, methods=["GET"])
    router.add_api_route("/health/live", endpoints.live, methods=["GET"])
    router.add_api_route("/health/ready", endpoints.ready, methods=["GET"])
    for path, metadata, ready, infer_route in (
        ("/models/{name}", endpoints.model_metadata, endpoints.model_ready, endpoints.infer),
        (
            "/models/{name}/versions/{version}",
            endpoints.version_metadata,
            endpoints.version_ready,
            endpoints.version_infer,
        ),
    ):
        router.add_api_route(path, metadata, methods=["GET"])
        router.add_api_route(f"{path}/ready", ready, methods=["GET"])
        router.add_api_route(
            f"{path}/infer",
            infer_route,
            methods=["POST"],
            response_model=InferenceResponse,
            openapi_extra=INFER_BODY,
        )
    repository: dict[str, Any] = {"methods": ["POST"], "tags": ["v2 repository"]}
    router.add_api_route("/repository/index", endpoints.repository_index, **repository)
    router.add_api_route(
        "/repository/models/{name}/load", endpoints.load, responses=ADMIN_ERRORS, **repository
    )
    router.add_api_route(
        "/repository/models/{name}/unload", endpoints.unload, responses=ADMIN_ERRORS, **repository
    )
    return router
