"""Application factory: builds settings -> registry -> data plane -> routes, and nothing at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from PIL import Image

from service.access import AccessMiddleware
from service.auth import KeyRing
from service.dataplane import DataPlane
from service.errors import install_error_handlers
from service.metrics import ServiceMetrics
from service.middleware import BodyLimitMiddleware
from service.ratelimit import RateLimiter
from service.registry import LoadOptions, ModelRegistry, poll
from service.repository import VersionPolicy
from service.rest import build_router
from service.runtime import choose_providers
from service.settings import Settings
from service.v2.endpoints import build_v2_router

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The default model cannot be served; the process must not report ready."""


def load_models(settings: Settings, dataplane: DataPlane) -> None:
    dataplane.registry.sync()
    if settings.default_model not in dataplane.registry:
        reason = dataplane.registry.failure_reason(settings.default_model) or "no bundle with that name"
        raise StartupError(
            f"default model '{settings.default_model}' cannot be served from {settings.model_repository}: {reason}"
        )
    dataplane.ready = True


def build_registry(settings: Settings, metrics: ServiceMetrics) -> ModelRegistry:
    providers = choose_providers(settings.provider)
    log.info("execution providers: %s (asked for %s)", providers, settings.provider)
    policy = VersionPolicy(
        settings.version_policy,
        settings.latest_versions,
        {name: frozenset(map(str, versions)) for name, versions in settings.model_versions.items()},
    )
    options = LoadOptions(
        providers,
        settings.intra_op_threads,
        settings.noise_seed,
        settings.warmup,
        settings.purify_skip_z,
        settings.max_rows_per_call,
        settings.precision,
    )
    return ModelRegistry(
        settings.model_repository, options, policy, protected=[settings.default_model], metrics=metrics
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # NOTE: Pillow's own decompression-bomb guard, set to our limit (the codecs also check each header
    # before decoding, and turn Pillow's warning into a refusal).
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    metrics = ServiceMetrics()
    dataplane = DataPlane(settings, build_registry(settings, metrics), metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(load_models, settings, dataplane)
        log.info("ready: serving %s", ", ".join(f"{m.name}/{m.version}" for m in dataplane.registry.models()))
        interval = settings.repository_poll_seconds
        poller = asyncio.create_task(poll(dataplane.registry, interval)) if interval > 0 else None
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
            await dataplane.close()

    app = FastAPI(
        title="Defended inference",
        version="0.1.0",
        description="Image classification behind Random Self-Ensemble defenses, with adversarial-input flags.",
        lifespan=lifespan,
    )
    app.state.dataplane = dataplane
    install_error_handlers(app)
    app.include_router(build_router(dataplane))
    app.include_router(build_v2_router(dataplane))
    # NOTE: the last one added runs first: access control and request ids wrap everything else.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        AccessMiddleware,
        keys=KeyRing(settings.client_keys(), settings.admin_keys()),
        limiter=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
        open_paths=frozenset(settings.open_paths),
        metrics=metrics,
        max_clients=settings.max_tracked_clients,
    )
    return app
