"""Per-request context (request id, client identity, what the data plane decided), carried in a contextvar
so that logs and per-client metrics can name the request without threading it through every call."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass
class RequestContext:
    request_id: str
    client: str
    """API key id (never the key) when authentication is on, else the peer address."""
    client_label: str = "other"
    """`client` as a metric label: the same, or "other" once too many distinct clients have been seen."""
    fields: dict[str, Any] = field(default_factory=dict)
    """What the handling code wants in the access log line: model, version, flag reasons."""


_current: ContextVar[RequestContext | None] = ContextVar("request_context", default=None)


def request_id_from(header: bytes | None) -> str:
    """The client's X-Request-ID when it is a sane token (so it can go into logs verbatim), else a new one."""
    if header:
        candidate = header.decode("latin-1")
        if _SAFE_REQUEST_ID.match(candidate):
            return candidate
    return uuid.uuid4().hex


def begin(context: RequestContext) -> None:
    _current.set(context)


def current() -> RequestContext | None:
    return _current.get()


def note(**values: Any) -> None:
    """Add fields to the current request's access log line (no-op outside a request)."""
    context = _current.get()
    if context is not None:
        context.fields.update(values)
