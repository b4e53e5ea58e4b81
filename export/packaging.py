"""What every recipe does after training: export the graphs, calibrate the flag on clean held-out images,
and measure the bundle through the service's own pipeline, so each recipe only trains and describes.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from export.add_screen import write_screen
from export.bundle import graph_entry
from export.calibrate import fit_thresholds, flagged
from export.onnx_export import (
    ENSEMBLE_INPUTS,
    ENSEMBLE_OUTPUTS,
    PURIFIER_INPUTS,
    PURIFIER_OUTPUTS,
    export_ensemble,
    export_purifier,
)
from models.dae import DenoisingAutoencoder
from models.data import Split
from models.purify import PurifierConfig
from models.rse import draws_noise
from service.manifest import GraphFile, PurifierSpec
from service.pipeline import run_pipeline_batched
from service.runtime import EnsembleEngine, PurifierEngine, choose_providers
from service.scoring import CHANGED_LABEL, DISAGREEMENT, ENTROPY, RECONSTRUCTION

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Packaged:
    """The exported graphs, their engines, and the manifest sections every recipe writes the same way."""

    graphs: dict[str, GraphFile]
    ensemble: EnsembleEngine
    purifier: PurifierEngine | None
    spec: PurifierSpec | None
    purifier_fields: dict[str, Any] | None
    thresholds: dict[str, float]
    rse: dict[str, Any]
    calibration: dict[str, Any]
    metrics: dict[str, Any]
    split_sizes: dict[str, int]

    def manifest_fields(self) -> dict[str, Any]:
        """The manifest sections the recipes share; a recipe adds what describes it (name, data, ...)."""
        return {
            "rse": self.rse,
            "graphs": self.graphs,
            "purifier": self.purifier_fields,
            "calibration": self.calibration,
            "metrics": self.metrics,
        }


def package(
    bundle_dir: Path,
    classifier: nn.Module,
    purifier: tuple[DenoisingAutoencoder, PurifierConfig, float] | None,
    split: Split,
    *,
    input_shape: tuple[int, int, int],
    samples: int,
    max_samples: int,
    target_fpr: float,
    seed: int,
    calibration_data: str,
    mirrored: bool = False,
) -> Packaged:
    """Export into a fresh `bundle_dir`, calibrate on `split.calibration`, measure on `split.test`.
    The classifier carries its RSE noise levels (`sigma_init`, `sigma_inner`), as `RSEClassifier` and
    `RSEResNet` do.

    `purifier` is (DAE, its purification settings, the noise sigma it was trained on), or None for an
    ensemble-only bundle. `mirrored`: odd passes see the image flipped left-right (`RSESpec.mirrored_passes`).
    """
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    classifier = classifier.cpu().eval()
    export_ensemble(classifier, bundle_dir / "ensemble.onnx", input_shape=input_shape, mirrored=mirrored)
    graphs = {"ensemble": graph_entry(bundle_dir, "ensemble.onnx", ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS)}
    # NOTE: a fixed noise seed makes the calibration and the recorded metrics reproducible run to run.
    providers = choose_providers("cpu")
    ensemble = EnsembleEngine(bundle_dir / "ensemble.onnx", providers=providers, seed=seed)
    engine, spec, fields = None, None, None
    if purifier is not None:
        dae, config, dae_noise = purifier
        export_purifier(dae.cpu().eval(), config, bundle_dir / "purifier.onnx", input_shape=input_shape)
        graphs["purifier"] = graph_entry(bundle_dir, "purifier.onnx", PURIFIER_INPUTS, PURIFIER_OUTPUTS)
        graphs["screen"] = write_screen(bundle_dir, "purifier.onnx")
        engine = PurifierEngine(bundle_dir / "purifier.onnx", providers=providers, seed=seed + 1)
        fields = {
            "steps": config.steps,
            "lr": config.lr,
            "epsilon": config.epsilon,
            "mu": config.mu,
            "sigma": config.sigma,
            "statistics_data": calibration_data,
            "dae_training_noise_sigma": dae_noise,
            "reform": config.reform,
        }
        spec = PurifierSpec(**fields)

    calibration = run_pipeline_batched(
        ensemble, engine, spec, split.calibration.images, samples, purify=engine is not None
    )
    if not np.isfinite(calibration.summary.mean_probabilities).all():
        raise FloatingPointError("the exported classifier answers NaN: its training diverged")
    if purifier is not None:
        names = [RECONSTRUCTION, DISAGREEMENT, CHANGED_LABEL]
    elif not draws_noise(classifier):
        # NOTE: a deterministic classifier's passes always agree; entropy is the only score it has.
        names = [ENTROPY]
    else:
        names = list(calibration.scores)
    thresholds = fit_thresholds({k: calibration.scores[k] for k in names}, target_fpr)
    test = run_pipeline_batched(ensemble, engine, spec, split.test.images, samples, purify=engine is not None)
    accuracy = float(np.mean(test.summary.class_index == split.test.labels))
    flag_rate = float(flagged(test.scores, thresholds).mean())
    log.info("clean accuracy %.4f, clean flag rate %.4f", accuracy, flag_rate)
    return Packaged(
        graphs=graphs,
        ensemble=ensemble,
        purifier=engine,
        spec=spec,
        purifier_fields=fields,
        thresholds=thresholds,
        rse={
            "sigma_init": classifier.sigma_init,
            "sigma_inner": classifier.sigma_inner,
            "default_samples": samples,
            "max_samples": max_samples,
            "mirrored_passes": mirrored,
        },
        calibration={
            "target_false_positive_rate": target_fpr,
            "thresholds": thresholds,
            "samples": samples,
            "data": calibration_data,
            "num_images": len(split.calibration),
            "calibration_false_positive_rate": float(
                flagged({k: calibration.scores[k] for k in thresholds}, thresholds).mean()
            ),
        },
        metrics={
            "clean_accuracy": accuracy,
            "test_images": len(split.test),
            "samples": samples,
            "flag_rate_clean": flag_rate,
            "measured_with": f"service.pipeline on {ensemble.provider}, onnxruntime, N={samples}",
        },
        split_sizes={
            "train": len(split.train),
            "calibration": len(split.calibration),
            "test": len(split.test),
        },
    )
