"""Does a classifier-guided DAE undo the gray-box attack on test images as well as on the images it
learned from?

A guided DAE (`cifar10-rse-hgd`) learns HGD's loss on one fixed set of PGD examples of training images.
Its training loss says how well it fits that set; the harness's known-weights figures say how much of the
attack it undoes on test images. This probe puts the two side by side with one attack: the harness's PGD
at the recipe's largest L∞ budget, crafted on the bundle's classifier with its noise off (APuDAE's gray-box
setting), on the first `--images` of the training images the guided DAE learned from (the first half of
them it saw attacked at 8/255, the budget probed) and on as many of the bundle's test images, each then sent through the pipeline as the
service serves it (purifier + RSE) and through RSE alone. A large gap between the two sets says the DAE
fits its examples without generalising: more (or fresher) attacked images, not a lower loss, is the lever.

    python -m evaluation.guided_gap --bundle model_repository/cifar10-rse-hgd/1 --data ../shared/data \\
        --images 500
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evaluation.attacks import PGD, run_attack
from evaluation.config import preset
from evaluation.recipes import recipe_for
from evaluation.report import probe_main
from evaluation.served_accuracy import CHUNK, load_served
from evaluation.twin import load_twin
from export.bundle import invoking_command
from export.cifar10_rse import guided_training_images
from models.attacks import art_classifier
from models.data import ImageDataset
from models.rse import without_noise
from service.registry import LoadedModel

TRAINING, TEST = "training images the guided DAE learned from", "test images"


def _accuracy(model: LoadedModel, images: np.ndarray, labels: np.ndarray, purify: bool) -> float:
    samples = model.manifest.rse.default_samples
    answers = [
        model.run(images[start : start + CHUNK], samples, purify).summary.class_index
        for start in range(0, len(images), CHUNK)
    ]
    return float((np.concatenate(answers) == labels).mean())


def measure(bundle: Path, data: Path | None, images: int) -> dict[str, Any]:
    """Clean and attacked accuracy, served and RSE alone, on both sets of images."""
    model, _ = load_served(bundle)
    manifest = model.manifest
    learned = int(manifest.training.get("dae_guided_images", 0))
    if not learned:
        raise SystemExit(f"{manifest.name}/{manifest.version} has no classifier-guided DAE")
    recipe = recipe_for(manifest)
    split = recipe.split(manifest, data)
    guide = without_noise(load_twin(bundle, recipe).classifier)
    config = preset("standard")
    epsilon = max(recipe.linf_budgets)
    settings = PGD.settings(config)
    attack = PGD.build(art_classifier(guide, manifest.input.shape, len(manifest.classes)), epsilon, settings)
    sets: dict[str, ImageDataset] = {
        TRAINING: guided_training_images(split.train, learned, manifest.data.seed),
        TEST: split.test,
    }
    rows = {}
    for name, chosen in sets.items():
        chosen = chosen.subset(np.arange(min(images, len(chosen))))
        attacked = run_attack(attack, chosen.images, chosen.labels, config.seed)
        rows[name] = {
            "images": len(chosen),
            **{
                f"{form}, {system}": _accuracy(model, inputs, chosen.labels, purify)
                for form, inputs in (("clean", chosen.images), ("attacked", attacked))
                for system, purify in (("served", True), ("RSE only", False))
            },
        }
    return {
        "bundle": f"{manifest.name}/{manifest.version}",
        "command": invoking_command(),
        "epsilon": epsilon,
        "attack": f"ART {PGD.name}, {settings['steps']} steps of {settings['step_size']}, "
        f"{settings['random_starts']} random start",
        "dae_guided_images": learned,
        "dae_guided_final_train_loss": manifest.training.get("dae_guided_final_train_loss"),
        "sets": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    columns = [key for key in next(iter(result["sets"].values())) if key != "images"]
    lines = [
        f"# Guided-DAE gap of `{result['bundle']}`",
        "",
        f"PGD L∞ ε = {result['epsilon']:.4f} ({result['attack']}), crafted on the bundle's classifier with its "
        f"noise off; the guided DAE learned from {result['dae_guided_images']} training images (final HGD "
        f"loss {result['dae_guided_final_train_loss']}). Command: `{result['command']}`.",
        "",
        "| images | count | " + " | ".join(columns) + " |",
        "| --- | --- |" + " --- |" * len(columns),
    ]
    lines += [
        f"| {name} | {row['images']} | " + " | ".join(f"{row[c]:.1%}" for c in columns) + " |"
        for name, row in result["sets"].items()
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    probe_main(__doc__ or "", "guided_gap", measure, markdown, argv)


if __name__ == "__main__":
    main()
