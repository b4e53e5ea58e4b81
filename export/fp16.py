"""Add a float16 ensemble graph to an existing bundle, checked against the float32 one it comes from.

    python -m export.fp16 model_repository/mnist-rse-apudae/1
    python -m export.fp16 model_repository/cifar10-rse-apudae/1 --data ../shared/data

The service serves it with `DEFENDED_PRECISION=fp16`. Half-width weights and activations halve the memory
traffic of the N noisy passes, which is meant for GPUs; on the 2-core development CPU it measured no faster
(docs/PERFORMANCE.md), where drawing the noise dominates. Only the ensemble is converted: the purifier's
Adam steps (lr 2/255, noise 0.7/255) are of the size of float16's spacing near 1 (1/1024), so they would be
rounded away.

The conversion (onnxconverter-common) keeps float32 inputs and outputs, so clients and the service's
pipeline see no difference. It is refused when, with the noise of both graphs pinned to 0, any class
probability differs from the float32 graph's by more than `--tolerance` on the bundle's calibration images.
Then clean accuracy and flag rate are measured through the served pipeline on the test images that the
manifest's own metrics were measured on, with the packaging's noise seeds, and recorded as `metrics.fp16`
next to them; every other figure of the bundle stays as it was.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx

from export.bundle import graph_entry, update_bundle
from export.calibrate import flagged
from export.onnx_export import ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS, pin_random_ops
from service.manifest import FP16_ENSEMBLE, Manifest, PrecisionCheck, load_manifest
from service.pipeline import run_pipeline_batched
from service.runtime import CPU, EnsembleEngine, PurifierEngine

log = logging.getLogger("export.fp16")
FP16_FILENAME = "ensemble_fp16.onnx"
DEFAULT_TOLERANCE = 2e-3
"""Largest |Δp| accepted: a few float16 steps at probabilities near 1 (spacing 2^-11 below 1)."""


def convert(source: Path, target: Path) -> Path:
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        # NOTE: it warns for every weight below float16's range that it sets to ±1e-7; what that rounding
        # does to the answers is what `max_probability_diff` measures.
        warnings.filterwarnings("ignore", message="the float32 number", category=UserWarning)
        model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return target


def max_probability_diff(fp32: Path, fp16: Path, images: np.ndarray, samples: int = 2) -> float:
    """Largest |p16 - p32| with both graphs' noise pinned to 0: the rounding alone."""
    with tempfile.TemporaryDirectory() as folder:
        pinned = [
            EnsembleEngine(pin_random_ops(path, Path(folder) / f"{i}.onnx"), providers=[CPU]).run(
                images, samples
            )
            for i, path in enumerate((fp32, fp16))
        ]
    return float(np.abs(pinned[0] - pinned[1]).max())


def add_fp16(bundle_dir: Path, data: Path | None, tolerance: float) -> Manifest:
    from evaluation.recipes import recipe_for

    manifest = load_manifest(bundle_dir, verify=True)
    split = recipe_for(manifest).split(manifest, data)
    if len(split.test) != manifest.metrics.test_images:
        raise SystemExit(f"{bundle_dir}: rebuilt {len(split.test)} test images, the manifest measured on "
                         f"{manifest.metrics.test_images}")  # fmt: skip
    source = bundle_dir / manifest.graphs["ensemble"].path
    with tempfile.TemporaryDirectory() as folder:
        # NOTE: converted aside and moved in only once accepted: a refusal leaves the bundle untouched
        candidate = convert(source, Path(folder) / FP16_FILENAME)
        difference = max_probability_diff(source, candidate, split.calibration.images)
        if difference > tolerance:
            raise SystemExit(
                f"{bundle_dir}: float16 probabilities differ by up to {difference:.2e} > {tolerance:g}"
            )
        target = Path(shutil.move(candidate, bundle_dir / FP16_FILENAME))
    # NOTE: the seeds `export.packaging` measured the float32 figures with, so the two differ by the graphs.
    seed = manifest.data.seed
    ensemble = EnsembleEngine(target, providers=[CPU], seed=seed)
    purifier = (
        PurifierEngine(bundle_dir / manifest.graphs["purifier"].path, providers=[CPU], seed=seed + 1)
        if manifest.purifier is not None
        else None
    )
    test = run_pipeline_batched(
        ensemble,
        purifier,
        manifest.purifier,
        split.test.images,
        manifest.metrics.samples,
        purify=purifier is not None,
    )
    check = PrecisionCheck(
        max_probability_diff=difference,
        tolerance=tolerance,
        clean_accuracy=float(np.mean(test.summary.class_index == split.test.labels)),
        flag_rate_clean=float(flagged(test.scores, manifest.calibration.thresholds).mean()),
        images=len(split.test),
    )
    log.info(
        "%s: fp16 max |Δp| %.2e; clean accuracy %.4f (fp32 %.4f), flag rate %.4f (fp32 %.4f)",
        bundle_dir, difference, check.clean_accuracy, manifest.metrics.clean_accuracy,
        check.flag_rate_clean, manifest.metrics.flag_rate_clean,
    )  # fmt: skip
    graphs = {
        **manifest.graphs,
        FP16_ENSEMBLE: graph_entry(bundle_dir, FP16_FILENAME, ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS),
    }
    metrics = manifest.metrics.model_copy(update={"fp16": check})
    return update_bundle(bundle_dir, manifest, graphs=graphs, metrics=metrics.model_dump())


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle", type=Path, help="bundle folder <repository>/<name>/<version>")
    parser.add_argument("--data", type=Path, default=None, help="CIFAR-10 bundles: the dataset folder")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    args = parser.parse_args(argv)
    add_fp16(args.bundle, args.data, args.tolerance)


if __name__ == "__main__":
    main()
