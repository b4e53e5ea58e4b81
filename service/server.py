"""uvicorn with the shutdown a load-balanced deployment needs.

On SIGTERM (Kubernetes' stop signal) readiness flips to 503 at once and new predictions are refused, so
the endpoint is taken out of rotation; requests already accepted finish (bounded by the drain timeout),
the batchers drain, and the process exits 0. Stock uvicorn re-raises the signal after its graceful
shutdown, which turns a clean drain into exit status -15; this server does not, and ignores repeated stop
signals while the drained process exits.
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
        """Our handler for the stop signals while serving; once the server has stopped, they are ignored.

        Neither uvicorn's re-raise nor the default handler may come back afterwards: Python's finalization
        (seconds, with onnxruntime sessions to free) would let a repeated SIGTERM (an operator's second
        `kill`, a supervisor's retry) kill a process that had already drained cleanly, turning exit 0 into
        -15. Ignoring is the one disposition finalization leaves in place; SIGKILL still ends a stuck exit.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.handle_exit)
        try:
            yield
        finally:
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
