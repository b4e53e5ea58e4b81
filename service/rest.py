"""REST endpoints: parse the transport, call the data plane, return its answer. No model logic lives here."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from service.dataplane import DataPlane
from service.errors import ClientGone, InvalidInput, MalformedRequest, NotReady, UnsupportedMediaType
from service.schemas import ErrorBody, ModelInfo, ModelList, PredictRequest, PredictResponse

_MULTIPART_SCHEMA = {
    "type": "object",
    "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "samples": {"type": "integer", "minimum": 1},
        "purify": {"type": "boolean"},
        "return_purified": {"type": "boolean"},
    },
    "required": ["files"],
}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 415, 422, 429, 500, 503, 504)
}

SamplesQuery = Annotated[int | None, Query(description="Ensemble size N; overrides the model's default.")]
PurifyQuery = Annotated[
    bool | None, Query(description="Purify before classifying (default: when the model has a purifier).")
]
ReturnPurifiedQuery = Annotated[bool, Query(description="Return the purified image as a base64 PNG.")]


async def _disconnected(request: Request, poll_seconds: float = 0.05) -> None:
    """Returns once the client has closed the connection (Starlette does not cancel handlers for it)."""
    while not await request.is_disconnected():
        await asyncio.sleep(poll_seconds)


def _parse_samples(raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise InvalidInput(f"samples must be an integer, got {raw!r}", field="samples")
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"samples must be an integer, got {raw!r}", field="samples") from None


def _parse_flag(name: str, raw: str | None) -> bool | None:
    if raw is None:
        return None
    lowered = raw.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise InvalidInput(f"{name} must be true or false, got {raw!r}", field=name)


@dataclass(frozen=True)
class PredictOptions:
    """Per-request options; values in the body or form override the query string's."""

    samples: int | None
    purify: bool | None
    return_purified: bool

    def override(
        self, samples: int | None = None, purify: bool | None = None, return_purified: bool | None = None
    ) -> PredictOptions:
        return PredictOptions(
            samples if samples is not None else self.samples,
            purify if purify is not None else self.purify,
            return_purified if return_purified is not None else self.return_purified,
        )


class Endpoints:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def healthz(self) -> dict[str, str]:
        return {"status": "alive"}

    async def readyz(self) -> JSONResponse:
        if not self.dataplane.ready:
            raise NotReady(
                "the service is shutting down" if self.dataplane.draining else "models are still loading"
            )
        return JSONResponse({"status": "ready", "models": self.dataplane.registry.names()})

    async def list_models(self) -> ModelList:
        return self.dataplane.list_models()

    async def model_metadata(self, name: str) -> ModelInfo:
        return self.dataplane.model_info(self.dataplane.model(name))

    async def metrics(self) -> Response:
        body, content_type = self.dataplane.metrics.render()
        return Response(body, media_type=content_type)

    async def predict_default(
        self,
        request: Request,
        samples: SamplesQuery = None,
        purify: PurifyQuery = None,
        return_purified: ReturnPurifiedQuery = False,
    ) -> PredictResponse:
        return await self._predict(request, None, PredictOptions(samples, purify, return_purified))

    async def predict(
        self,
        name: str,
        request: Request,
        samples: SamplesQuery = None,
        purify: PurifyQuery = None,
        return_purified: ReturnPurifiedQuery = False,
    ) -> PredictResponse:
        return await self._predict(request, name, PredictOptions(samples, purify, return_purified))

    async def predict_version(
        self,
        name: str,
        version: str,
        request: Request,
        samples: SamplesQuery = None,
        purify: PurifyQuery = None,
        return_purified: ReturnPurifiedQuery = False,
    ) -> PredictResponse:
        options = PredictOptions(samples, purify, return_purified)
        return await self._predict(request, name, options, version)

    async def _predict(
        self, request: Request, name: str | None, options: PredictOptions, version: str | None = None
    ) -> PredictResponse:
        model = self.dataplane.model(name, version)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            body = await self._json_body(request)
            options = options.override(body.samples, body.purify, body.return_purified or None)
            images = await self.dataplane.decode_instances(model, body.instances)
        elif content_type == "multipart/form-data":
            payloads, form = await self._form_body(request)
            options = options.override(**form)
            images = await self.dataplane.decode_files(model, payloads)
        else:
            raise UnsupportedMediaType(
                f"content type '{content_type or 'none'}' is not accepted; send application/json "
                '({"instances": [...]}) or multipart/form-data (image files)'
            )
        samples = self.dataplane.resolve_samples(model, options.samples)
        purify = self.dataplane.resolve_purify(model, options.purify)
        work = asyncio.ensure_future(
            self.dataplane.predict(model, images, samples, purify, options.return_purified)
        )
        gone = asyncio.ensure_future(_disconnected(request))
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not work.done():
            # the client hung up: cancelling drops its request from the queue before the engine sees it
            work.cancel()
            raise ClientGone("the client closed the connection before the answer was ready")
        return PredictResponse(predictions=work.result())

    @staticmethod
    async def _json_body(request: Request) -> PredictRequest:
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise MalformedRequest(f"body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidInput('body must be a JSON object like {"instances": [...]}')
        data["samples"] = _parse_samples(data.get("samples"))
        try:
            return PredictRequest.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise InvalidInput(f"invalid request body: {problems}") from None

    async def _form_body(self, request: Request) -> tuple[list[bytes], dict[str, Any]]:
        limit = self.dataplane.settings.max_instances
        try:
            form = await request.form(
                max_files=limit + 1, max_fields=16, max_part_size=self.dataplane.settings.max_body_bytes
            )
        except (MultiPartException, ValueError) as exc:
            raise MalformedRequest(f"malformed multipart body: {exc}") from None
        try:
            files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
            payloads = [await upload.read() for upload in files]
            fields = {key: form.get(key) for key in ("samples", "purify", "return_purified")}
            fields = {key: value for key, value in fields.items() if isinstance(value, str)}
            return payloads, {
                "samples": _parse_samples(fields.get("samples")),
                "purify": _parse_flag("purify", fields.get("purify")),
                "return_purified": _parse_flag("return_purified", fields.get("return_purified")),
            }
        finally:
            await form.close()


def build_router(dataplane: DataPlane) -> APIRouter:
    endpoints = Endpoints(dataplane)
    router = APIRouter()
    router.add_api_route("/healthz", endpoints.healthz, methods=["GET"], tags=["health"])
    router.add_api_route("/readyz", endpoints.readyz, methods=["GET"], tags=["health"], responses=ERRORS)
    router.add_api_route(
        "/metrics",
        endpoints.metrics,
        methods=["GET"],
        tags=["monitoring"],
        response_class=PlainTextResponse,
        responses={200: {"description": "Prometheus text exposition format"}},
    )
    router.add_api_route("/v1/models", endpoints.list_models, methods=["GET"], tags=["v1"])
    router.add_api_route(
        "/v1/models/{name}", endpoints.model_metadata, methods=["GET"], tags=["v1"], responses=ERRORS
    )
    # NOTE: the last pins a version the policy serves, by number (TF Serving's /versions/N), so clients that
    # pinned the old version keep it while a new one rolls out.
    for path, endpoint in (
        ("/v1/predict", endpoints.predict_default),
        ("/v1/models/{name}/predict", endpoints.predict),
        ("/v1/models/{name}/versions/{version}/predict", endpoints.predict_version),
    ):
        router.add_api_route(
            path, endpoint, methods=["POST"], tags=["v1"], openapi_extra=PREDICT_BODY, responses=ERRORS
        )
    return router
