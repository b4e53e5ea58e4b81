"""Typed service settings, read from environment variables prefixed `DEFENDED_` (e.g. `DEFENDED_PORT=9000`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEFENDED_", extra="ignore", env_parse_none_str="none")

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
    version_policy: Literal["latest", "all", "specific"] = "latest"
    """Which versions of each bundle are served: the highest `latest_versions` that load, every one, or
    those listed in `model_versions`. Requests that name no version get the highest served one."""
    latest_versions: int = Field(default=1, ge=1)
    """With the `latest` policy: how many of the highest loadable versions of each bundle serve at once."""
    model_versions: dict[str, list[int]] = Field(default_factory=dict)
    """With the `specific` policy: name -> versions, e.g. `{"mnist-rse-apudae": [1, 2]}` (JSON in the
    environment); bundles not listed serve their latest version."""
    repository_poll_seconds: float = Field(default=0.0, ge=0.0)
    """Rescan the repository this often and swap in new or changed versions (0: scan only at start-up).
    Old versions drain: requests already running on them finish there."""
    admin_api: bool = False
    """Enable `POST /v2/repository/models/{name}/load` and `/unload` (403 while off). Anyone who can reach
    the port can then reload models, so keep it off where the port is exposed."""

    provider: Literal["auto", "cuda", "cpu"] = "auto"
    """Execution provider: `auto` takes CUDA when onnxruntime offers it, else CPU; `cuda` falls back to CPU
    with a warning when CUDA is missing."""
    precision: Literal["fp32", "fp16"] = "fp32"
    """`fp16` serves a bundle's `ensemble_fp16` graph where it has one (float32 elsewhere, with a warning),
    within the tolerance its manifest records. Meant for GPUs: on CPU it measured no faster
    (docs/PERFORMANCE.md)."""
    intra_op_threads: int = Field(default=1, ge=0)
    """onnxruntime threads inside one engine call (0: one per core). On CPU one thread per call and one
    call per core is faster than one call spread over every core: the small convolutions scale poorly
    across threads and the in-graph noise generator runs on one thread anyway (docs/PERFORMANCE.md)."""
    max_rows_per_call: int = Field(default=256, ge=0)
    """On CPU, the most graph rows in one onnxruntime call (an ensemble image counts N rows, a purifier
    image one); a larger batch is split into several calls. A few hundred rows keep a call's activations
    in cache: one ensemble call of 2,560 rows ran at 40% of the per-image rate of 160-row calls
    (docs/PERFORMANCE.md). 0: no limit. GPU sessions are never split."""
    engine_workers: int = Field(default=0, ge=0)
    """Engine calls that may run at once, across models (0: one per core). Keep workers x intra-op
    threads at or below the core count."""
    batching: bool = True
    """Merge concurrent requests for one model into one engine call. Off, each request gets its own call
    (the baseline the benchmark compares against); queueing and its limits apply either way."""
    max_batch_images: int = Field(default=64, ge=1)
    """Most images in one merged engine call (a single larger request still runs, alone)."""
    max_queue_delay_ms: float = Field(default=0.0, ge=0)
    """How long the oldest queued request may wait for company once an engine thread is free. Under load
    batches fill while the threads are busy anyway; on CPU waiting only adds latency, while on a GPU, where
    one large call costs little more than a small one, a few milliseconds can pay off."""
    max_queue_images: int = Field(default=1024, ge=1)
    """Images waiting per model beyond which requests are refused with 503 and Retry-After, so latency
    stays bounded instead of growing with the backlog."""
    purify_skip_z: float | None = 0.0
    """Adaptive compute: inputs whose reconstruction z-score is at or below this skip the purification
    steps (0: exactly those the APuDAE loss gives no gradient). `none` purifies every input for T steps."""
    noise_seed: int | None = None
    """Fixes the in-graph noise for reproducible tests. Leave unset in production: the RSE and purifier
    noise must stay unpredictable to clients, so by default every session draws a fresh seed from the OS."""
    warmup: bool = True
    """Run one engine call per model before reporting ready."""

    request_timeout_seconds: float = Field(default=30.0, gt=0)
    """A prediction not answered by then gets 504; if it is still queued it never reaches the engine."""

    api_keys: list[SecretStr] = Field(default_factory=list)
    """Client API keys (JSON list in the environment). With none here or in the files, authentication is
    off."""
    api_keys_file: Path | None = None
    """A mounted secret with one client key per line (`#` comments allowed)."""
    admin_api_keys: list[SecretStr] = Field(default_factory=list)
    """Keys that may also call the admin routes (model repository load/unload)."""
    admin_api_keys_file: Path | None = None
    open_paths: list[str] = ["/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"]
    """Paths served without an API key (probes and the Prometheus scrape by default)."""
    rate_limit_per_second: float = Field(default=0.0, ge=0)
    """Requests per second each client may sustain (429 beyond, with Retry-After); 0 turns it off."""
    rate_limit_burst: int = Field(default=20, ge=1)
    """Requests a client may send at once before the rate applies."""
    max_tracked_clients: int = Field(default=1000, ge=1)
    """Distinct clients named in the per-client metrics; the rest are counted as `other`."""
    log_format: Literal["json", "text"] = "json"
    """JSON lines (with request ids) for log pipelines, or plain text for a terminal."""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest request body accepted (413 above it)."""
    max_instances: int = Field(default=64, ge=1)
    """Most images in one request (413 above it)."""
    max_image_pixels: int = Field(default=4096 * 4096, ge=1)
    """Largest width x height an uploaded image may declare before it is decoded (decompression bombs)."""

    def engine_threads(self) -> int:
        return self.engine_workers or os.cpu_count() or 1

    def client_keys(self) -> list[str]:
        return _keys(self.api_keys, self.api_keys_file)

    def admin_keys(self) -> list[str]:
        return _keys(self.admin_api_keys, self.admin_api_keys_file)


def read_key_file(path: Path) -> list[str]:
    """One key per line; blank lines and `#` comments skipped."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _keys(inline: list[SecretStr], path: Path | None) -> list[str]:
    return [key.get_secret_value() for key in inline] + (read_key_file(path) if path else [])
