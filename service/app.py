"""Application factory: builds settings -> registry -> data plane -> routes, and nothing at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.dataplane import DataPlane
from service.errors import install_error_handlers
from service.metrics import ServiceMetrics
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
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
        dataplane.metrics.flag_rate_baseline.labels(model.name, model.version).set(
            model.manifest.metrics.flag_rate_clean
        )
    dataplane.ready = True


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = ServiceMetrics()
    dataplane = DataPlane(settings, ModelRegistry(), metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(load_models, settings, dataplane)
        log.info("ready: serving %s", ", ".join(m.name for m in dataplane.registry.models()))
        try:
            yield
        finally:
            dataplane.close()

    app = FastAPI(
        title="Defended inference",
        version="0.1.0",
        description="Image classification behind Random Self-Ensemble defenses, with adversarial-input flags.",
        lifespan=lifespan,
    )
    app.state.dataplane = dataplane
    install_error_handlers(app)
    app.include_router(build_router(dataplane))
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
