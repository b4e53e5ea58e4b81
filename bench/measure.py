"""The measurements behind `make bench`, one function per row family of the report."""

from __future__ import annotations

import csv
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.reference import NaivePipeline
from export.calibrate import flagged
from models.purify import AdaptivePurifier
from service.pipeline import run_pipeline_batched
from service.registry import LoadedModel

REPO_ROOT = Path(__file__).resolve().parent.parent


def rate(work: Callable[[], int], min_seconds: float, min_calls: int = 2) -> float:
    """Items per second of `work` (which returns how many items it did), after one warm-up call."""
    work()
    done, calls, started = 0, 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < min_seconds:
        done += work()
        calls += 1
    return done / (time.perf_counter() - started)


def naive_rate(naive: NaivePipeline, images: np.ndarray, samples: int, purify: bool) -> dict[str, float]:
    """The reference way: one image per call, N sequential passes, autograd purification; images/s with
    torch's default threads and with one thread, and the better of the two as the baseline.

    NOTE: batch-1 eager torch is hypersensitive to other load on the cores (its OpenMP threads spin at
    every tiny op): with another process busy, the default-thread figure fell 100-fold in one run. Taking
    the better setting keeps the baseline at its fastest, which only makes our ratios harder to meet.
    """
    position = iter(range(10**9))

    def one() -> int:
        naive(images[next(position) % len(images)][None], samples, purify)
        return 1

    default_threads = torch.get_num_threads()
    measured = {f"threads_{default_threads}": rate(one, min_seconds=3.0, min_calls=len(images))}
    torch.set_num_threads(1)
    try:
        measured["threads_1"] = rate(one, min_seconds=3.0, min_calls=len(images))
    finally:
        torch.set_num_threads(default_threads)
    return {**measured, "best": max(measured.values())}


def engine_rate(
    model: LoadedModel,
    images: np.ndarray,
    batch: int,
    samples: int,
    purify: bool,
    skip_z: float | None,
    workers: int,
) -> float:
    """Our engine in-process (no HTTP), as the service runs it: `workers` calls side by side, each one
    `infer` over a batch of `batch` clean test images. The median of three measurements: a single one
    once fell by a third on the idle machine (docs/PERFORMANCE.md), and one such reading decides a target."""
    chunks = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)] or [images[:batch]]
    position = iter(range(10**9))
    skip = -np.inf if skip_z is None else skip_z  # -inf: purify every image for T steps

    with ThreadPoolExecutor(workers) as pool:

        def side_by_side() -> int:
            taken = [chunks[next(position) % len(chunks)] for _ in range(workers)]
            list(pool.map(lambda chunk: model.infer(chunk, samples, purify, skip_z=skip), taken))
            return sum(len(chunk) for chunk in taken)

        return statistics.median(rate(side_by_side, min_seconds=2.0) for _ in range(3))


def adaptive_trade(
    model: LoadedModel,
    clean: tuple[np.ndarray, np.ndarray],
    attacked: tuple[np.ndarray, np.ndarray],
    samples: int,
) -> dict[str, dict[str, float]]:
    """Accuracy and flag rate with every input purified for T steps vs with adaptive skipping."""
    thresholds = model.manifest.calibration.thresholds
    out: dict[str, dict[str, float]] = {}
    for name, (images, labels) in {"clean": clean, "pgd": attacked}.items():
        # NOTE: fixed-T twice: the spread between two runs of one mode is the noise floor (the purifier's and
        # the ensemble's randomness) against which the adaptive change has to be read.
        for mode, skip_z in {"fixed_T": None, "fixedT-repeat": None, "adaptive": model.skip_z}.items():
            result = run_pipeline_batched(
                model.engine, model.purifier, model.manifest.purifier, images, samples,
                screen=model.screen, skip_z=skip_z,
            )  # fmt: skip
            out[f"{name}_{mode}"] = {
                "images": len(images),
                "accuracy": float((result.summary.class_index == labels).mean()),
                "flag_rate": float(flagged(result.scores, thresholds).mean()),
                "purified_share": float((result.purification.steps > 0).mean()),
            }
    return out


def pipeline_flops(naive: NaivePipeline, shape: tuple[int, ...], samples: int) -> dict[str, float]:
    """FLOPs per image, counted by torch on the twin modules: one classifier pass, the T-step purification
    (forwards, VJPs and the final error), one DAE forward (the screen), and the two pipelines built on them."""
    x = torch.rand(1, *shape)

    def count(fn: Callable[[], Any]) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())

    classifier = count(lambda: naive.classifier(x))
    purifier = count(lambda: AdaptivePurifier(naive.dae, naive.config, noise=False)(x))
    screen = count(lambda: naive.dae(x))
    return {
        "classifier_pass": classifier,
        "purifier": purifier,
        "screen": screen,
        "fixed_T_pipeline": purifier + 2 * samples * classifier,
        "skipped_pipeline": screen + samples * classifier,
        "ensemble_only": samples * classifier,
    }


def matmul_flops_per_second(size: int = 2048, repeats: int = 5) -> float:
    """The machine's dense fp32 limit for context: best of `repeats` large matrix products in torch."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_service(**settings: str) -> Iterator[Service]:
    """`python -m service` on loopback with DEFENDED_* settings; yields it once ready."""
    port = _free_port()
    env = {
        **os.environ,
        "DEFENDED_HOST": "127.0.0.1",
        "DEFENDED_PORT": str(port),
        "DEFENDED_LOG_LEVEL": "warning",
    }
    env.update({f"DEFENDED_{key.upper()}": value for key, value in settings.items()})
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO_ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise RuntimeError("service did not become ready")
        yield Service(url, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)


@dataclass(frozen=True)
class Service:
    url: str
    pid: int

    def rss_bytes(self) -> int:
        """Resident memory of the service process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for process {self.pid}")


def locust_run(
    url: str,
    users: int,
    seconds: int,
    path: str = "/v1/predict",
    rate_per_user: float = 0,
    extra_env: dict[str, str] | None = None,
) -> dict:
    """Locust headless against `url`; the aggregated row of its CSV stats (latencies in ms)."""
    with tempfile.TemporaryDirectory() as folder:
        prefix = Path(folder) / "run"
        env = {
            **os.environ,
            "BENCH_PATH": path,
            "BENCH_RATE_PER_USER": str(rate_per_user),
            **(extra_env or {}),
        }
        command = [
            sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "bench" / "locustfile.py"), "--headless",
            "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", url, "--csv", str(prefix),
            "--only-summary", "--loglevel", "WARNING",
        ]  # fmt: skip
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=seconds + 60)
        with open(f"{prefix}_stats.csv", newline="") as handle:
            row = next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")
    return {
        "users": users,
        "seconds": seconds,
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "requests_per_second": float(row["Requests/s"]),
        "p50_ms": float(row["50%"]),
        "p95_ms": float(row["95%"]),
        "p99_ms": float(row["99%"]),
        "rate_per_user": rate_per_user,
    }
