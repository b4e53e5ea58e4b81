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
import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.reference import NaivePipeline
from export.calibrate import flagged
from models.purify import AdaptivePurifier
from service.pipeline import run_pipeline_batched
from service.registry import LoadedModel
from service.runtime import CPU, CUDA, create_session

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
    torch's default threads and with one thread, and the better of the two as the baseline (on a GPU, the
    one figure there).

    NOTE: batch-1 eager torch is hypersensitive to other load on the cores (its OpenMP threads spin at
    every tiny op): with another process busy, the default-thread figure fell 100-fold in one run. Taking
    the better setting keeps the baseline at its fastest, which only makes our ratios harder to meet.
    """
    position = iter(range(10**9))

    def one() -> int:
        naive(images[next(position) % len(images)][None], samples, purify)
        return 1

    if naive.device.type != "cpu":
        measured = {naive.device.type: rate(one, min_seconds=3.0, min_calls=len(images))}
        return {**measured, "best": max(measured.values())}
    default_threads = torch.get_num_threads()
    measured = {f"threads_{default_threads}": rate(one, min_seconds=3.0, min_calls=len(images))}
    torch.set_num_threads(1)
    try:
        measured["threads_1"] = rate(one, min_seconds=3.0, min_calls=len(images))
    finally:
        torch.set_num_threads(default_threads)
    return {**measured, "best": max(measured.values())}


@dataclass(frozen=True)
class EngineRate:
    images_per_second: float
    """Median of three throughput measurements."""
    latency_ms: dict[str, float]
    """Percentiles (p50, p95, p99) of one `infer` call's wall time over every measured call."""


def engine_rate(
    model: LoadedModel,
    images: np.ndarray,
    batch: int,
    samples: int,
    purify: bool,
    skip_z: float | None,
    workers: int,
) -> EngineRate:
    """Our engine in-process (no HTTP), as the service runs it: `workers` calls side by side, each one
    `infer` over a batch of `batch` clean test images. The median of three measurements: a single one
    once fell by a third on the idle machine (docs/PERFORMANCE.md), and one such reading decides a target.
    Per-call latencies are taken after one warm-up round, so first-call costs (allocations, kernel
    selection on a GPU) stay out of the tail."""
    chunks = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)] or [images[:batch]]
    position = iter(range(10**9))
    skip = -np.inf if skip_z is None else skip_z  # -inf: purify every image for T steps
    calls: list[float] = []

    def timed(chunk: np.ndarray) -> None:
        started = time.perf_counter()
        model.infer(chunk, samples, purify, skip_z=skip)
        calls.append(time.perf_counter() - started)

    with ThreadPoolExecutor(workers) as pool:

        def side_by_side() -> int:
            taken = [chunks[next(position) % len(chunks)] for _ in range(workers)]
            list(pool.map(timed, taken))
            return sum(len(chunk) for chunk in taken)

        side_by_side()
        calls.clear()
        throughput = statistics.median(rate(side_by_side, min_seconds=2.0) for _ in range(3))
    quantiles = np.percentile(np.asarray(calls) * 1e3, [50, 95, 99])
    return EngineRate(throughput, dict(zip(("p50", "p95", "p99"), map(float, quantiles), strict=True)))


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
    x = torch.rand(1, *shape, device=naive.device)

    def count(fn: Callable[[], Any]) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())

    classifier = count(lambda: naive.classifier(x))
    purifier = count(lambda: AdaptivePurifier(naive.dae, naive.config, noise=False).to(naive.device)(x))
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


def gpu_matmul_flops_per_second(device: torch.device, size: int = 8192, repeats: int = 7) -> dict[str, float]:
    """The GPU's dense limits for context, by precision: float32 with TF32 off (the like-for-like peak for our
    float32 graphs), float32 with TF32 on, and float16. Each the median of `repeats` timed products after a
    warm-up, the device synchronized before and after each one (kernels run asynchronously)."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    measured = {}
    try:
        for label, dtype, allow_tf32 in (
            ("float32", torch.float32, False),
            ("tf32", torch.float32, True),
            ("float16", torch.float16, False),
        ):
            torch.backends.cuda.matmul.allow_tf32 = allow_tf32
            a, b = (torch.rand(size, size, device=device, dtype=dtype) for _ in range(2))

            def product(a: torch.Tensor = a, b: torch.Tensor = b) -> None:
                torch.mm(a, b)
                torch.cuda.synchronize(device)

            product()
            seconds = statistics.median(_timed(product) for _ in range(repeats))
            measured[label] = 2 * size**3 / seconds
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return measured


def cuda_graph_rate(model: LoadedModel, images: np.ndarray, batch: int, samples: int) -> dict[str, Any]:
    """An attempt at onnxruntime's CUDA graphs (`enable_cuda_graph`) on the ensemble graph alone at one fixed
    batch: images/s with the input updated in place and the probabilities copied back per call, or the
    error onnxruntime raised. Our graph takes `samples` as a dynamic input and draws RandomNormalLike noise,
    either of which may make it refuse (every node must run on the CUDA EP for capture)."""
    options = {"enable_cuda_graph": "1"}
    try:
        session = create_session(
            model.path / model.manifest.graphs["ensemble"].path,
            providers=[(CUDA, options), CPU],
            intra_op_threads=1,
            seed=None,
        )
        chunk = np.ascontiguousarray(images[:batch], dtype=np.float32)
        device_images = ort.OrtValue.ortvalue_from_numpy(chunk, "cuda", 0)
        classes = len(model.manifest.classes)
        device_probabilities = ort.OrtValue.ortvalue_from_numpy(
            np.zeros((batch, samples, classes), dtype=np.float32), "cuda", 0
        )
        binding = session.io_binding()
        binding.bind_ortvalue_input("images", device_images)
        binding.bind_cpu_input("samples", np.asarray(samples, dtype=np.int64))
        binding.bind_ortvalue_output("probabilities", device_probabilities)
        session.run_with_iobinding(binding)  # the first run captures the graph

        def replay() -> int:
            device_images.update_inplace(chunk)
            session.run_with_iobinding(binding)
            device_probabilities.numpy()
            return batch

        return {"batch": batch, "images_per_second": rate(replay, min_seconds=2.0)}
    # NOTE: deliberately broad: onnxruntime raises its own types, and a refusal is a finding to record.
    except Exception as exc:
        return {"batch": batch, "error": f"{type(exc).__name__}: {exc}"}


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
