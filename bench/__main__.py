"""`make bench`: defended-inference speed, side by side with the naive way, in one run on one machine.

    python -m bench --out reports/bench            (full; about 10 minutes on 2 CPU cores)
    python -m bench --out reports/bench --quick    (smoke run; figures not for quoting)
    python -m bench --bundle model_repository/cifar10-rse-apudae/1 --data ../shared/data \
        --out reports/bench/cifar10                (the CIFAR-10 bundle; its test images need the data)
    python -m bench --provider cuda ...            (on a GPU: onnxruntime-gpu and CUDA torch; the naive
                                                    baseline runs on the GPU too)
    python -m bench --skip-http ...                (no service over HTTP: no fastapi/locust needed)

Writes results.json, results.md and throughput.png under --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from tqdm import tqdm

from bench import measure
from bench.reference import NaivePipeline
from bench.report import write_report
from evaluation.recipes import BundleRecipe, recipe_for
from evaluation.twin import load_twin
from export.bundle import invoking_command
from models.rse import noise_disabled
from service.manifest import FP16_ENSEMBLE
from service.registry import LoadedModel, LoadOptions, load_bundle
from service.runtime import CUDA, choose_providers
from service.settings import Settings

log = logging.getLogger("bench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    parser.add_argument("--bundle", type=Path, default=Path("model_repository/mnist-rse-apudae/1"))
    parser.add_argument(
        "--data", type=Path, default=None, help="CIFAR-10 bundles: the dataset folder, as for the evaluation"
    )
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument(
        "--provider",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where the engine, the naive baseline and the service run (cuda: refuses to fall back to CPU)",
    )
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=None,
        help="default: 1 8 32 64 128 (cpu), 1 8 32 128 512 (cuda)",
    )
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--http-seconds", type=int, default=12)
    parser.add_argument("--skip-http", action="store_true", help="leave out the service over HTTP (locust)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    args = parser.parse_args(argv)
    if args.batches is None:
        args.batches = DEFAULT_BATCHES[args.provider]
    if args.quick:
        args.batches, args.users, args.http_seconds = [1, 8], [1, 4], 3
    return args


DEFAULT_BATCHES = {"cpu": [1, 8, 32, 64, 128], "cuda": [1, 8, 32, 128, 512]}
"""Engine batch sizes by provider: a GPU keeps gaining from batches far past where a CPU call leaves cache."""
CUDA_GRAPH_BATCH = 32
"""The fixed batch of the CUDA-graph attempt: the batch of the engine/naive target."""


def providers_for(provider: str) -> list[str]:
    """onnxruntime providers for `--provider`. With cuda, both onnxruntime's CUDA provider and CUDA torch (the
    naive baseline's device) must be there: a run that quietly fell back to CPU would report CPU figures as
    GPU ones."""
    providers = choose_providers(provider)
    if provider == "cuda" and (CUDA not in providers or not torch.cuda.is_available()):
        raise SystemExit(
            f"--provider cuda: CUDAExecutionProvider is not available (onnxruntime {ort.__version__} offers "
            f"{ort.get_available_providers()}; torch {torch.__version__} sees CUDA: "
            f"{torch.cuda.is_available()}). Install onnxruntime-gpu and a CUDA build of torch, or use "
            "--provider cpu."
        )
    return providers


def attacked_inputs(
    bundle_dir: Path, recipe: BundleRecipe, images: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """ART PGD-L∞ at the recipe's largest budget (20 steps), crafted on the bundle's own classifier with its
    noise off (the evaluation twin): attacked inputs to compare adaptive and fixed-T compute on."""
    from models.attacks import pgd_linf

    twin = load_twin(bundle_dir, recipe)
    epsilon = recipe.linf_budgets[-1]
    with noise_disabled(twin.classifier):
        return pgd_linf(
            twin.classifier, images, labels, epsilon=epsilon, step_size=epsilon / 10, steps=20, seed=0
        )


def write_request_images(images: np.ndarray, folder: Path) -> Path:
    """The first test images as PNG files, the bodies the locust users send (`BENCH_IMAGES`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        pixels = np.round(np.moveaxis(image, 0, -1) * 255).astype(np.uint8)
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(folder / f"{index:02d}.png")
    return folder


def machine(model: LoadedModel, device: torch.device) -> dict[str, Any]:
    """What the figures were measured on, providers as the sessions actually got them."""
    about = {
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "onnxruntime": ort.__version__,
        "providers": model.engine.session.get_providers(),
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
    }
    if device.type == "cuda":
        about["gpu"] = torch.cuda.get_device_name(device)
    return about


def http_runs(args: argparse.Namespace, endpoint: str, images: np.ndarray) -> dict[str, Any]:
    """The service over HTTP under locust, on `--provider`, batching on and off, then at half saturation."""
    http: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        bodies = {"BENCH_IMAGES": str(write_request_images(images, Path(folder)))}
        for label, settings, path in (
            ("batching_on", {"batching": "true"}, endpoint),
            ("batching_off", {"batching": "false"}, endpoint),
            ("batching_on_no_purify", {"batching": "true"}, f"{endpoint}?purify=false"),
        ):
            with measure.running_service(provider=args.provider, **settings) as service:
                http[label] = [
                    measure.locust_run(service.url, u, args.http_seconds, path, extra_env=bodies)
                    for u in args.users
                ]
        saturation = max(run["requests_per_second"] for run in http["batching_on"])
        users = max(args.users)
        with measure.running_service(provider=args.provider, batching="true") as service:
            http["half_load"] = measure.locust_run(
                service.url,
                users,
                args.http_seconds,
                endpoint,
                rate_per_user=saturation / 2 / users,
                extra_env=bodies,
            )
    return http


def run(args: argparse.Namespace) -> dict[str, Any]:
    providers = providers_for(args.provider)
    device = torch.device(args.provider)
    settings = Settings()  # the service's defaults: threads per call, calls side by side, skip threshold
    # NOTE: one call at a time on a GPU: side-by-side calls only multiply its activation memory (one per
    # core, 16, ran out of an H100's memory at batch 512)
    workers = 1 if args.provider == "cuda" else settings.engine_threads()
    options = LoadOptions(
        providers,
        settings.intra_op_threads,
        warmup=True,
        skip_z=settings.purify_skip_z,
        max_rows=settings.max_rows_per_call,
    )
    manifest_model = load_bundle(args.bundle, options)
    if args.provider == "cuda" and manifest_model.engine.provider != CUDA:
        raise SystemExit(f"--provider cuda: onnxruntime gave the sessions {manifest_model.engine.provider}")
    manifest = manifest_model.manifest
    # the same pipeline on the float16 ensemble graph, where the bundle has one (DEFENDED_PRECISION=fp16)
    fp16_model = (
        load_bundle(args.bundle, replace(options, precision="fp16"))
        if FP16_ENSEMBLE in manifest.graphs
        else None
    )
    recipe = recipe_for(manifest)
    test = recipe.split(manifest, args.data).test
    clean, labels = test.images[:1000], test.labels[:1000]
    naive = NaivePipeline(args.bundle, device)
    n = args.samples
    results: dict[str, Any] = {
        "bundle": f"{manifest.name}/{manifest.version}",
        "command": invoking_command(),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "provider": args.provider,
        "machine": machine(manifest_model, device),
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
    adaptive = settings.purify_skip_z
    modes = {
        "fixed_T": (manifest_model, True, None),
        "adaptive": (manifest_model, True, adaptive),
        "no_purify": (manifest_model, False, None),
    }
    if fp16_model is not None:
        modes |= {"adaptive_fp16": (fp16_model, True, adaptive), "no_purify_fp16": (fp16_model, False, None)}
    rates = {
        mode: {str(b): measure.engine_rate(model, clean, b, n, purify, skip, workers) for b in args.batches}
        for mode, (model, purify, skip) in modes.items()
    }
    results["engine"] = {mode: {b: r.images_per_second for b, r in by.items()} for mode, by in rates.items()}
    results["engine_latency_ms"] = {
        mode: {b: r.latency_ms for b, r in by.items()} for mode, by in rates.items()
    }
    results["engine_threads"] = {"calls_side_by_side": workers, "threads_per_call": settings.intra_op_threads}
    results["batcher_max_batch"] = settings.max_batch_images
    if args.provider == "cuda":
        results["cuda_graph"] = measure.cuda_graph_rate(manifest_model, clean, CUDA_GRAPH_BATCH, n)
    steps.update()
    count = (100, 40) if args.quick else (1000, 200)
    attacked = attacked_inputs(args.bundle, recipe, clean[: count[1]], labels[: count[1]])
    results["adaptive_trade"] = measure.adaptive_trade(
        manifest_model, (clean[: count[0]], labels[: count[0]]), (attacked, labels[: count[1]]), n
    )
    steps.update()
    results["flops_per_image"] = measure.pipeline_flops(naive, tuple(manifest.input.shape), n)
    if device.type == "cuda":
        by_precision = measure.gpu_matmul_flops_per_second(device, 4096 if args.quick else 8192)
        results["matmul_flops_per_second_by_precision"] = by_precision
        results["matmul_flops_per_second"] = by_precision["float32"]  # the fraction of peak uses this one
    else:
        results["matmul_flops_per_second"] = measure.matmul_flops_per_second(1024 if args.quick else 2048)
    steps.update()
    if not args.skip_http:
        results["http"] = http_runs(args, f"/v1/models/{manifest.name}/predict", clean[:10])
    steps.update()
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
