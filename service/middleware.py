"""ASGI middleware: the request-body size limit, and the JSON answer middleware gives before the app runs.

Both are plain ASGI (not `BaseHTTPMiddleware`) so bodies stream through without being buffered twice.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes`: at once from Content-Length, or as soon as a streamed body passes it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            error = PayloadTooLarge(
                f"request body of {declared.decode(errors='replace')} bytes exceeds the limit of {self.max_bytes}",
                limit=self.max_bytes,
            )
            await send_json(send, error.status_code, error.body())
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(
                        f"request body exceeds the limit of {self.max_bytes} bytes", limit=self.max_bytes
                    )
            return message

        await self.app(scope, limited_receive, send)


async def send_json(send: Send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    """Answer from middleware, before the app runs: a JSON error body like the exception handlers'."""
    payload = json.dumps(body).encode()
    extra = [(key.lower().encode(), value.encode()) for key, value in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
