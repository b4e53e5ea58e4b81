"""The outermost middleware: request id, authentication, per-client rate limit and accounting, the HTTP
request metrics and the access log.

Per-client figures (requests, rejections, flagged inputs) are what makes a query-based black-box attack
visible: many near-duplicate queries from one client with a high flag rate. Clients are named by API key
id, or by peer address when authentication is off; past `max_clients` distinct names the metric label
becomes "other", so an attacker rotating addresses cannot blow up the metrics' cardinality.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import requestctx
from service.auth import KeyRing
from service.errors import ServiceError
from service.metrics import ServiceMetrics
from service.middleware import send_json
from service.ratelimit import RateLimiter

log = logging.getLogger("service.access")


class ClientLabels:
    def __init__(self, max_clients: int) -> None:
        self._max = max_clients
        self._seen: set[str] = set()

    def label(self, client: str) -> str:
        if client in self._seen:
            return client
        if len(self._seen) < self._max:
            self._seen.add(client)
            return client
        return "other"


class AccessMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyRing,
        limiter: RateLimiter,
        open_paths: frozenset[str],
        metrics: ServiceMetrics,
        max_clients: int,
    ) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.open_paths = open_paths
        self.metrics = metrics
        self.labels = ClientLabels(max_clients)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        peer = scope.get("client")
        context = requestctx.RequestContext(
            request_id=requestctx.request_id_from(headers.get(b"x-request-id")),
            client=peer[0] if peer else "unknown",
        )
        requestctx.begin(context)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", context.request_id.encode()),
                ]
            await send(message)

        try:
            if scope["path"] in self.open_paths:
                await self.app(scope, receive, send_with_id)
                return
            try:
                caller = self.keys.authorize(scope["path"], headers)
                if caller is not None:
                    context.client = caller.key_id
                context.client_label = self.labels.label(context.client)
                self.metrics.client_requests.labels(context.client_label).inc()
                self.limiter.check(context.client)
            except ServiceError as refused:
                self.metrics.client_rejected.labels(context.client_label, refused.code).inc()
                await send_json(send_with_id, refused.status_code, refused.body(), refused.headers)
                return
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            # NOTE: metrics are labelled by route *template* ("unmatched" when none), so that request paths
            # cannot blow up their cardinality; the log line can name the path itself.
            template = getattr(scope.get("route"), "path", None)
            self.metrics.requests.labels(template or "unmatched", scope["method"], str(status)).inc()
            self.metrics.request_latency.labels(template or "unmatched", scope["method"]).observe(seconds)
            route = template or scope["path"]
            latency_ms = round(seconds * 1000, 2)
            log.info(
                "%s %s %s %.1fms",
                scope["method"],
                route,
                status,
                latency_ms,
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "latency_ms": latency_ms,
                    "client": context.client,
                    **context.fields,
                },
            )
