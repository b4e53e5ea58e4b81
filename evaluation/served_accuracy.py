"""How accurate is a bundle as the service serves it, on as many test images as the dataset has?

A bundle's manifest measures its clean accuracy on the test images its recipe chose (for CIFAR-10 on 2 CPU
cores, a stratified 2,000 of the 10,000: a standard error of about 0.7 points), and the harness's clean row on
fewer still. A target such as "clean accuracy at least 88%" needs the whole test set: this runs the served
pipeline (purifier + RSE, loaded as the service loads it, with its settings' adaptive compute) and RSE alone
on it, and reports each accuracy with its 95% Wilson interval, per class too, and the flag rate.

    python -m evaluation.served_accuracy --bundle model_repository/cifar10-rse-hgd/1 --data ../shared/data \
        --images 10000
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest
from tqdm import tqdm

from evaluation.recipes import recipe_for
from evaluation.report import probe_main
from export.bundle import invoking_command
from models.data import stratified_split
from service.registry import LoadedModel, LoadOptions, load_bundle
from service.scoring import flag_reasons
from service.settings import Settings

CHUNK = 500
"""Images per pipeline call: the service's row limit splits each call further, this bounds the memory."""


def load_served(bundle: Path) -> tuple[LoadedModel, Settings]:
    """The bundle on the CPU as the service loads it: its adaptive compute and row limit, what clients see."""
    settings = Settings()
    options = LoadOptions(
        ["CPUExecutionProvider"],
        warmup=False,
        skip_z=settings.purify_skip_z,
        max_rows=settings.max_rows_per_call,
    )
    return load_bundle(bundle, options), settings


def wilson(correct: int, total: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (scipy's): unlike the normal one it stays inside [0, 1]
    near 100%."""
    interval = binomtest(correct, total).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)


def _accuracy(hits: np.ndarray) -> dict[str, Any]:
    low, high = wilson(int(hits.sum()), len(hits))
    return {"accuracy": float(hits.mean()), "correct": int(hits.sum()), "ci95": [low, high]}


def measure(bundle: Path, data: Path | None, images: int) -> dict[str, Any]:
    """`images` of the dataset's whole test set where the recipe has one (else of the bundle's own test
    split), a stratified sample where fewer than all: served and RSE-only accuracy, per class, and how often
    the served answer was flagged."""
    model, settings = load_served(bundle)
    manifest = model.manifest
    recipe = recipe_for(manifest)
    whole = recipe.test_set is not None
    test = recipe.test_set(data) if whole else recipe.split(manifest, data).test
    if images < len(test):
        # NOTE: a folder-per-class test set is stored class after class: its first images are one class
        test = stratified_split(test, test=images, calibration=0, seed=manifest.data.seed).test
    samples, thresholds = manifest.rse.default_samples, manifest.calibration.thresholds
    served, alone, flagged = [], [], []
    for start in tqdm(range(0, len(test), CHUNK), desc="served accuracy", unit="chunk"):
        batch = test.images[start : start + CHUNK]
        result = model.run(batch, samples, manifest.purifier is not None)
        served.append(result.summary.class_index)
        alone.append(model.run(batch, samples, False).summary.class_index)
        flagged.extend(bool(reasons) for reasons in flag_reasons(result.scores, thresholds))
    served_hits = np.concatenate(served) == test.labels
    alone_hits = np.concatenate(alone) == test.labels
    classes = manifest.classes
    return {
        "bundle": f"{manifest.name}/{manifest.version}",
        "command": invoking_command(),
        "images": len(test),
        "test_set": "the dataset's whole test set" if whole else "the bundle's own test split",
        "samples": samples,
        "skip_z": settings.purify_skip_z,
        "served": _accuracy(served_hits),
        "rse_only": _accuracy(alone_hits),
        "flag_rate": float(np.mean(flagged)),
        "per_class": {
            name: {
                "served": float(served_hits[test.labels == index].mean()),
                "rse_only": float(alone_hits[test.labels == index].mean()),
            }
            for index, name in enumerate(classes)
            if np.any(test.labels == index)
        },
        "manifest_clean_accuracy": manifest.metrics.clean_accuracy,
        "manifest_test_images": manifest.metrics.test_images,
    }


def markdown(result: dict[str, Any]) -> str:
    def cell(row: dict[str, Any]) -> str:
        low, high = row["ci95"]
        return f"{row['accuracy']:.2%} ({row['correct']}/{result['images']}; 95% CI {low:.2%} to {high:.2%})"

    lines = [
        f"# Served accuracy of `{result['bundle']}`",
        "",
        f"{result['images']} images of {result['test_set']}, N = {result['samples']}, the service settings' adaptive compute "
        f"(skip z ≤ {result['skip_z']}). Command: `{result['command']}`. The bundle's manifest measured "
        f"{result['manifest_clean_accuracy']:.2%} served on its own {result['manifest_test_images']} test images.",
        "",
        f"- served (purifier + RSE): {cell(result['served'])}; flagged {result['flag_rate']:.1%}",
        f"- RSE only: {cell(result['rse_only'])}",
        "",
        "| class | served | RSE only |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {name} | {row['served']:.1%} | {row['rse_only']:.1%} |"
        for name, row in result["per_class"].items()
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    probe_main(__doc__ or "", "served_accuracy", measure, markdown, argv)


if __name__ == "__main__":
    main()
