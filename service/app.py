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
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.ratelimit import RateLimiter
from service.registry import ModelRegistry
from service.rest import build_router
from service.runtime import choose_providers
from service.settings import Settings

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The default model cannot be served; the process must not report ready."""


def load_models(settings: Settings, dataplane: DataPlane) -> None:
    providers = choose_providers(settings.provider)
    log.info("execution providers: %s (asked for %s)", providers, settings.provider)
    dataplane.registry.load_repository(
        settings.model_repository,
        providers=providers,
        intra_op_threads=settings.intra_op_threads,
        seed=settings.noise_seed,
        warmup=settings.warmup,
        skip_z=settings.purify_skip_z,
    )
    if settings.default_model not in dataplane.registry:
        reason = dataplane.registry.failures.get(settings.default_model, "no bundle with that name")
        raise StartupError(
            f"default model '{settings.default_model}' cannot be served from {settings.model_repository}: {reason}"
        )
    for model in dataplane.registry.models():
        dataplane.metrics.model_info.labels(
            model.name, model.version, model.engine.provider, str(model.manifest.rse.default_samples)
        ).set(1)
    dataplane.ready = True


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # NOTE: Pillow's own decompression-bomb guard, set to our limit (the codecs also check each header
    # before decoding, and turn Pillow's warning into a refusal).
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    metrics = ServiceMetrics()
    dataplane = DataPlane(settings, ModelRegistry(), metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(load_models, settings, dataplane)
        log.info("ready: serving %s", ", ".join(m.name for m in dataplane.registry.models()))
        try:
            yield
        finally:
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
    # NOTE: the last one added runs first: access control and request ids wrap everything else.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(
        AccessMiddleware,
        keys=KeyRing(settings.client_keys(), settings.admin_keys()),
        limiter=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
        open_paths=frozenset(settings.open_paths),
        metrics=metrics,
        max_clients=settings.max_tracked_clients,
    )
    return app
