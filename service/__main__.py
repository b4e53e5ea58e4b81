"""`python -m service`: serve the model repository with uvicorn, configured by `DEFENDED_*` variables."""

from __future__ import annotations

import sys

import uvicorn

from service import logs
from service.app import create_app
from service.server import DrainingServer
from service.settings import Settings

STARTUP_FAILURE = 3


def main() -> None:
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # our handlers (service.logs) format uvicorn's records too
        access_log=False,  # service.access writes one access line per request, with its request id
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
    )
    server = DrainingServer(config, on_drain=app.state.dataplane.start_draining)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
