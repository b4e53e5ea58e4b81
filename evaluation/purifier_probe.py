"""Does a bundle's purifier undo a transfer perturbation, or only notice it?

A purifier can do two things with an adversarial image: notice it (the DAE reconstructs it worse than clean
images, which feeds the flag) and undo it (the classifier answers right after purification). The harness
reports only their product; when a purifier adds nothing (CIFAR-10, docs/ROBUSTNESS.md), this probe says
which of the two fails. On the bundle's test images, with PGD crafted on the harness's own undefended
classifier (the transfer threat model) and on the bundle's classifier with its noise off (known weights),
it measures:
- the DAE's clipped reconstruction error on clean and attacked images (means, ROC AUC per attack);
- the undefended classifier's and the RSE ensemble's (N passes of the twin) accuracy on the clean and the
  attacked images as they are, on the DAE's output D(x) (MagNet's reformer), and purified (APuDAE, what
  the service serves).
With --finetune-epochs K, a copy of the DAE trained K more epochs is probed the same way, its mu and sigma
measured again on the calibration split: whether a better-trained DAE would help, before anyone spends a
training run on it. It trains on blind noise (a std drawn per image up to the recipe's), and with
--finetune-on adversarial also to map PGD examples of --finetune-images training images, crafted on the
bundle's classifier with its noise off, back to those images: whether a DAE can learn to undo the attack.

    python -m evaluation.purifier_probe --bundle model_repository/cifar10-rse-apudae/1 --data ../shared/data \\
        --finetune-epochs 2 [--finetune-on adversarial]
"""

from __future__ import annotations

import argparse
import copy
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from evaluation.attacks import PGD, run_attack
from evaluation.config import preset
from evaluation.metrics import auc
from evaluation.recipes import recipe_for
from evaluation.report import probe_parser, run_probe
from evaluation.surrogate import Sources
from evaluation.systems import ExpectationOverNoise, torch_probabilities
from evaluation.twin import load_twin
from export.bundle import invoking_command
from models.attacks import art_classifier
from models.dae import DAETrainConfig, DenoisingAutoencoder, clean_error_stats, clipped_errors, train_dae
from models.purify import AdaptivePurifier, PurifierConfig
from models.rse import without_noise
from service.manifest import load_manifest

log = logging.getLogger("evaluation.purifier_probe")
CLEAN, TRANSFER, KNOWN_WEIGHTS = "clean", "transfer PGD", "known-weights PGD"


def _batched(function: Any, images: np.ndarray, batch: int = 100) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate(
            [function(torch.from_numpy(images[i : i + batch])).numpy() for i in range(0, len(images), batch)]
        )


def probe_dae(
    dae: DenoisingAutoencoder,
    purification: PurifierConfig,
    calibration: np.ndarray,
    inputs: dict[str, np.ndarray],
    labels: np.ndarray,
    classifiers: dict[str, nn.Module],
) -> dict[str, Any]:
    """The figures of one DAE; `inputs` maps "clean" and each attack to images, `purification` gives the
    steps and step sizes (mu and sigma are measured here, on `calibration`, as the recipes do)."""
    mu, sigma = clean_error_stats(dae.eval(), calibration)
    purifier = AdaptivePurifier(dae, replace(purification, mu=mu, sigma=sigma)).eval()
    errors = {name: clipped_errors(dae, images) for name, images in inputs.items()}
    figures: dict[str, Any] = {
        "mu": mu,
        "sigma": sigma,
        "mean_error": {name: float(value.mean()) for name, value in errors.items()},
        "error_auc": {name: auc(errors[CLEAN], value) for name, value in errors.items() if name != CLEAN},
        "accuracy": {},
    }
    for name, images in inputs.items():
        seen = {
            "as is": images,
            "D(x)": _batched(lambda x: dae(x).clamp(0.0, 1.0), images),
            "purified": _batched(lambda x: purifier(x)[0], images),
        }
        for form, shown in seen.items():
            figures["accuracy"][f"{name}, {form}"] = {
                model_name: float((torch_probabilities(model, shown).argmax(1) == labels).mean())
                for model_name, model in classifiers.items()
            }
    return figures


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Purifier probe of `{result['bundle']}`",
        "",
        f"{result['images']} test images, PGD L∞ ε = {result['epsilon']:.4f} crafted on the undefended "
        f"classifier ({TRANSFER}) and on the bundle's classifier with its noise off ({KNOWN_WEIGHTS}). "
        f"Command: `{result['command']}`.",
    ]
    for dae_name, figures in result["daes"].items():
        errors = figures["mean_error"]
        attacked = "; ".join(
            f"{name}: mean error {errors[name]:.3f}, ROC AUC of the error {value:.3f}"
            for name, value in figures["error_auc"].items()
        )
        lines += [
            "",
            f"## {dae_name}",
            "",
            f"mu {figures['mu']:.3f}, sigma {figures['sigma']:.3f}; mean reconstruction error clean "
            f"{errors[CLEAN]:.3f}; {attacked}.",
            "",
            "| input | " + " | ".join(result["classifiers"]) + " |",
            "| --- |" + " --- |" * len(result["classifiers"]),
        ]
        for row, accuracies in figures["accuracy"].items():
            lines.append(
                f"| {row} | " + " | ".join(f"{accuracies[c]:.1%}" for c in result["classifiers"]) + " |"
            )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    manifest = load_manifest(args.bundle, verify=True)
    recipe = recipe_for(manifest)
    twin = load_twin(args.bundle, recipe)
    if twin.purifier is None:
        raise SystemExit(f"{manifest.name} has no purifier to probe")
    split = recipe.split(manifest, args.data)
    config = preset("standard")
    sources = Sources(recipe, manifest, split.train, args.cache / manifest.name, args.surrogate_epochs)
    undefended, _ = sources.undefended()
    test = split.test.subset(np.arange(min(args.images, len(split.test))))
    epsilon = args.epsilon or max(recipe.linf_budgets)
    known = without_noise(twin.classifier)

    def pgd(source: nn.Module, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        estimator = art_classifier(source, manifest.input.shape, len(manifest.classes))
        return run_attack(PGD.build(estimator, epsilon, PGD.settings(config)), images, labels, config.seed)

    inputs = {
        CLEAN: test.images,
        TRANSFER: pgd(undefended, test.images, test.labels),
        KNOWN_WEIGHTS: pgd(known, test.images, test.labels),
    }
    classifiers = {
        "undefended classifier": undefended,
        f"RSE (N = {manifest.rse.default_samples})": ExpectationOverNoise(
            twin.classifier, manifest.rse.default_samples, mirrored=manifest.rse.mirrored_passes
        ),
    }
    daes = {"shipped DAE": twin.purifier.dae}
    if args.finetune_epochs:
        tuned = copy.deepcopy(twin.purifier.dae).train()
        spec = manifest.purifier
        assert spec is not None
        train_config = DAETrainConfig(
            epochs=args.finetune_epochs,
            batch_size=128,
            lr=args.finetune_lr,
            noise_sigma=spec.dae_training_noise_sigma,
            blind=True,
            seed=config.seed + 1,
        )
        name = f"the DAE trained {args.finetune_epochs} more epochs on blind noise"
        images, pairs = split.train.images, None
        if args.finetune_on == "adversarial":
            order = np.random.default_rng(config.seed).permutation(len(split.train))
            chosen = np.sort(order[: args.finetune_images])
            images = split.train.images[chosen]
            pairs = pgd(known, images, split.train.labels[chosen])
            name += f" of {len(images)} training images and their PGD examples ({KNOWN_WEIGHTS})"
        train_dae(tuned, images, train_config, pairs=pairs)
        daes[name] = tuned
    result: dict[str, Any] = {
        "bundle": f"{manifest.name}/{manifest.version}",
        "command": invoking_command(),
        "images": len(test),
        "epsilon": epsilon,
        "classifiers": list(classifiers),
        "daes": {},
    }
    for name, dae in daes.items():
        log.info("probing %s", name)
        result["daes"][name] = probe_dae(
            dae, twin.purifier.config, split.calibration.images, inputs, test.labels, classifiers
        )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = probe_parser(__doc__)
    parser.add_argument("--epsilon", type=float, default=None, help="default: the recipe's largest budget")
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument(
        "--finetune-on",
        choices=("blind-noise", "adversarial"),
        default="blind-noise",
        help="adversarial: also map PGD examples crafted on the bundle's noise-free classifier back",
    )
    parser.add_argument("--finetune-images", type=int, default=4000, help="training images, adversarial only")
    parser.add_argument("--surrogate-epochs", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=Path("runs/eval"), help="where the harness caches")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    run_probe(parse_args(argv), "purifier_probe", run, markdown)


if __name__ == "__main__":
    main()
