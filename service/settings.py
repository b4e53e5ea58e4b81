"""Typed service settings, read from environment variables prefixed `DEFENDED_` (e.g. `DEFENDED_PORT=9000`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEFENDED_", extra="ignore")

    host: str = "127.0.0.1"
    """Address uvicorn binds to."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port uvicorn listens on."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the service and of uvicorn."""
    graceful_shutdown_seconds: int = Field(default=30, ge=1)
    """After SIGTERM, how long in-flight requests may finish before uvicorn closes them; the Helm chart's
    `terminationGracePeriodSeconds` must exceed this plus its preStop pause."""

    model_repository: Path = REPO_ROOT / "model_repository"
    """Folder of bundles laid out as `<name>/<version>/manifest.json`."""
    default_model: str = "mnist-rse-apudae"
    """Bundle served by `POST /v1/predict`; the service is not ready unless it loads."""

    provider: Literal["auto", "cuda", "cpu"] = "auto"
    """Execution provider: `auto` takes CUDA when onnxruntime offers it, else CPU; `cuda` falls back to CPU
    with a warning when CUDA is missing."""
    intra_op_threads: int = Field(default=0, ge=0)
    """onnxruntime threads inside one operator (0 lets onnxruntime pick one per core)."""
    engine_workers: int = Field(default=1, ge=1)
    """Engine calls that may run at once; more than one oversubscribes the cores on small machines."""
    noise_seed: int | None = None
    """Fixes the in-graph noise for reproducible tests. Leave unset in production: the RSE and purifier
    noise must stay unpredictable to clients, so by default every session draws a fresh seed from the OS."""
    warmup: bool = True
    """Run one engine call per model before reporting ready."""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest request body accepted (413 above it)."""
    max_instances: int = Field(default=64, ge=1)
    """Most images in one request (413 above it)."""
    max_image_pixels: int = Field(default=4096 * 4096, ge=1)
    """Largest width x height an uploaded image may declare before it is decoded (decompression bombs)."""
