"""Does a bundle's flag tell attacks from ordinary corruption? A control, not an attack.

An attack "caught" by the flag says something only if the flag stays quiet on inputs that are merely noisy:
a detector that fires on any departure from its clean calibration images would also flag every attack, and
every camera frame with sensor noise. So on the bundle's test images, this measures the served pipeline
(purifier + RSE, loaded as the service loads it, with its settings' adaptive compute) and RSE alone under
random corruptions of the sizes the attacks use: a random sign per pixel at each L∞ budget (an attack's
shape, without its direction), Gaussian noise, and JPEG re-encoding (what uploads go through). Per
corruption: accuracy, the median reconstruction z-score, the flag rate, and how often each score fired.
Nothing here is an attack; the robustness figures come from `python -m evaluation`.

    python -m evaluation.noise_control --bundle model_repository/cifar10-rse-hgd/1 --data ../shared/data
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evaluation.recipes import recipe_for
from evaluation.report import probe_main
from evaluation.served_accuracy import load_served
from export.bundle import invoking_command
from service.scoring import RECONSTRUCTION, flag_reasons

log = logging.getLogger("evaluation.noise_control")
Corruption = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Each image encoded as JPEG at `quality` and decoded again, with Pillow, as an upload would be."""
    decoded = []
    for image in images:
        pixels = np.clip(np.round(image.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(
            buffer, format="JPEG", quality=quality
        )
        array = np.asarray(Image.open(buffer), dtype=np.float32) / 255
        decoded.append(array.reshape(pixels.shape).transpose(2, 0, 1))
    return np.stack(decoded)


def corruptions(budgets: tuple[float, ...]) -> dict[str, Corruption]:
    """Name -> corruption of [N,C,H,W] pixels in [0, 1]; the outputs are clipped back to [0, 1]."""
    table: dict[str, Corruption] = {"clean": lambda x, _: x}
    for epsilon in budgets:
        table[f"random sign, L∞ {epsilon:.4g}"] = lambda x, rng, e=epsilon: (
            x + e * rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=x.shape)
        )
    for sigma in (0.01, 0.03):
        table[f"Gaussian σ {sigma}"] = lambda x, rng, s=sigma: x + s * rng.standard_normal(x.shape)
    table["JPEG quality 75"] = lambda x, _: jpeg(x, 75)
    return table


def measure(bundle: Path, data: Path | None, images: int, seed: int = 0) -> dict[str, Any]:
    """`seed` draws the corruptions; the graphs draw their noise as the service's do (a fresh seed each)."""
    model, settings = load_served(bundle)
    manifest = model.manifest
    if manifest.purifier is None:
        raise SystemExit(f"{manifest.name} has no purifier, so no reconstruction flag to control")
    recipe = recipe_for(manifest)
    test = recipe.split(manifest, data).test
    test = test.subset(np.arange(min(images, len(test))))
    samples, thresholds = manifest.rse.default_samples, manifest.calibration.thresholds
    rng = np.random.default_rng(seed)
    rows: dict[str, Any] = {}
    for name, corrupt in corruptions(recipe.linf_budgets).items():
        corrupted = np.clip(corrupt(test.images, rng), 0.0, 1.0).astype(np.float32)
        served, alone = model.run(corrupted, samples, True), model.run(corrupted, samples, False)
        reasons = flag_reasons(served.scores, thresholds)
        rows[name] = {
            "mean_abs_change": float(np.abs(corrupted - test.images).mean()),
            "served_accuracy": float((served.summary.class_index == test.labels).mean()),
            "rse_only_accuracy": float((alone.summary.class_index == test.labels).mean()),
            "median_reconstruction_z": float(np.median(served.scores[RECONSTRUCTION])),
            "flag_rate": float(np.mean([bool(r) for r in reasons])),
            "fired": {score: float(np.mean([score in r for r in reasons])) for score in thresholds},
        }
        log.info("%s: %s", name, rows[name])
    return {
        "bundle": f"{manifest.name}/{manifest.version}",
        "command": invoking_command(),
        "images": len(test),
        "samples": samples,
        "skip_z": settings.purify_skip_z,
        "reform": manifest.purifier.reform,
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    scores = list(next(iter(result["rows"].values()))["fired"])
    lines = [
        f"# Noise control of `{result['bundle']}`",
        "",
        f"{result['images']} test images, N = {result['samples']}, the service settings' adaptive compute "
        f"(skip z ≤ {result['skip_z']}). Random corruptions, not attacks. Command: `{result['command']}`.",
        "",
        "| input | mean abs change | served accuracy | RSE only accuracy | median reconstruction z | flagged | "
        + " | ".join(f"{s} fired" for s in scores)
        + " |",
        "| --- |" + " --- |" * (5 + len(scores)),
    ]
    for name, row in result["rows"].items():
        fired = " | ".join(f"{row['fired'][s]:.1%}" for s in scores)
        lines.append(
            f"| {name} | {row['mean_abs_change']:.4f} | {row['served_accuracy']:.1%} | "
            f"{row['rse_only_accuracy']:.1%} | {row['median_reconstruction_z']:.2f} | {row['flag_rate']:.1%} | "
            f"{fired} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    probe_main(__doc__ or "", "noise_control", measure, markdown, argv)


if __name__ == "__main__":
    main()
