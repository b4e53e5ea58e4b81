"""Per-client token buckets: a query-based black-box attack needs thousands of queries, so a configurable
rate per client (429 beyond it) makes it slow and, through the per-client metrics, visible."""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from service.errors import RetryLater


class RateLimited(RetryLater):
    status_code = 429
    code = "rate_limited"


class RateLimiter:
    def __init__(self, per_second: float, burst: int, max_clients: int = 10_000) -> None:
        self.per_second = per_second
        self.burst = burst
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def check(self, client: str) -> None:
        """Take one token from `client`'s bucket or raise `RateLimited` saying when one will be there."""
        if not self.enabled:
            return
        now = time.monotonic()
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.per_second)
        if tokens < 1.0:
            self._remember(client, tokens, now)
            wait = math.ceil((1.0 - tokens) / self.per_second)
            raise RateLimited(
                f"client rate limit of {self.per_second:g} requests/s (burst {self.burst}) reached",
                retry_after=wait,
            )
        self._remember(client, tokens - 1.0, now)

    def _remember(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self._max_clients:  # forget the least recently seen client
            self._buckets.popitem(last=False)
