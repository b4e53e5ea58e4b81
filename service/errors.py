"""Service exceptions and the one place that maps every exception to an HTTP answer.

Clients get a JSON body `{"error": "<what was wrong>", "code": "<machine-readable>"}` and a 4xx status for
anything they can fix; a 500 only for our own faults, logged with the request path.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with a status code and a message meant for the client."""

    status_code = 400
    code = "bad_request"
    headers: dict[str, str] | None = None

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "code": self.code, **self.detail}


class InvalidInput(ServiceError):
    """The payload is well-formed but its content cannot be used (bad image, shape, range, values)."""

    status_code = 422
    code = "invalid_input"


class MalformedRequest(ServiceError):
    status_code = 400
    code = "malformed_request"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class ModelNotFound(ServiceError):
    status_code = 404
    code = "model_not_found"


class NotReady(ServiceError):
    status_code = 503
    code = "not_ready"


class RetryLater(ServiceError):
    """A refusal the client should retry after `retry_after` seconds (sent as the Retry-After header)."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.headers = {"Retry-After": str(retry_after)}


class QueueFull(RetryLater):
    """Backpressure: the model's queue is full (or draining)."""

    status_code = 503
    code = "overloaded"


class ClientGone(ServiceError):
    """Nobody reads this answer; the status (nginx's 499) only shows up in logs and metrics."""

    status_code = 499
    code = "client_closed_request"


class RequestTimeout(ServiceError):
    status_code = 504
    code = "timeout"


class EngineFailure(ServiceError):
    """An engine call raised: only the requests of that batch fail, the service keeps serving."""

    status_code = 500
    code = "engine_error"


class AdminDisabled(ServiceError):
    status_code = 403
    code = "admin_disabled"


class Conflict(ServiceError):
    """The request is valid but would break an invariant of the service (e.g. unloading the default model)."""

    status_code = 409
    code = "conflict"


class LoadFailed(ServiceError):
    """A bundle asked for by name could not be loaded (hash check, manifest, sessions or warm-up failed)."""

    status_code = 400
    code = "load_failed"


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(item) for item in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc), "code": "invalid_request"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail), "code": "http_error"},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error", "code": "internal"}, status_code=500)
