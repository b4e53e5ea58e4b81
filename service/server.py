"""uvicorn with the shutdown a load-balanced deployment needs.

On SIGTERM (Kubernetes' stop signal) readiness flips to 503 at once and new predictions are refused, so
the endpoint is taken out of rotation; requests already accepted finish (bounded by the drain timeout),
the batchers drain, and the process exits 0. Stock uvicorn re-raises the signal after its graceful
shutdown, which turns a clean drain into exit status -15; this server does not.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_drain = on_drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info(
                "%s: draining; readiness is 503, in-flight requests get up to %ss",
                signal.Signals(sig).name,
                self.config.timeout_graceful_shutdown,
            )
            self._on_drain()
        super().handle_exit(sig, frame)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handlers, restored afterwards, without re-raising the signal once drained."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
