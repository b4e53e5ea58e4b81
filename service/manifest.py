"""The bundle manifest: the only contract between `export/` (which writes it) and `service/` (which reads it).

A bundle is a directory `model_repository/<name>/<version>/` holding ONNX graphs and `manifest.json`.
Everything the service needs to run a bundle correctly (input spec, classes, noise levels, sample counts,
detection thresholds) is here, together with what a reviewer needs to trust it (the producing command, the
data split, measured metrics, file hashes).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST_FILENAME = "manifest.json"
SCHEMA_VERSION = 1
FP16_ENSEMBLE = "ensemble_fp16"


class ManifestError(ValueError):
    """The bundle on disk cannot be served: missing files, bad JSON, or hashes that do not match."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """What one input image must look like when it reaches the graphs."""

    channels: int = Field(ge=1, le=4)
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    dtype: Literal["float32"] = "float32"
    value_range: tuple[float, float] = (0.0, 1.0)
    color_mode: Literal["L", "RGB"]
    """Pillow mode that decoded images are converted to before scaling to `value_range`."""

    @model_validator(mode="after")
    def _mode_matches_channels(self) -> InputSpec:
        expected = {"L": 1, "RGB": 3}[self.color_mode]
        if self.channels != expected:
            raise ValueError(f"color_mode {self.color_mode} needs {expected} channels, not {self.channels}")
        return self

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


class Normalization(_Strict):
    """Per-channel normalisation. It is applied inside the graphs, so clients always send pixels in range."""

    mean: list[float]
    std: list[float]
    applied_in_graph: bool = True


class RSESpec(_Strict):
    """Random Self-Ensemble settings (Liu et al., ECCV 2018)."""

    sigma_init: float = Field(ge=0)
    """Std of the Gaussian noise added to the pixels before the first convolution."""
    sigma_inner: float = Field(ge=0)
    """Std of the noise added before every later convolution."""
    default_samples: int = Field(ge=1)
    """N used when a request does not ask for one."""
    max_samples: int = Field(ge=1)
    """Largest N a request may ask for (bounds the engine work per image)."""
    mirrored_passes: bool = False
    """Whether the ensemble graph classifies the image flipped left-right in every odd pass (test-time flip
    averaging; bundles of mirror-symmetric classes only). The graph does it; an attack's twin must too."""

    @model_validator(mode="after")
    def _default_within_max(self) -> RSESpec:
        if self.default_samples > self.max_samples:
            raise ValueError("default_samples exceeds max_samples")
        return self


class GraphFile(_Strict):
    """One ONNX file of the bundle and the I/O names the service binds to."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    inputs: list[str]
    outputs: list[str]


class PurifierSpec(_Strict):
    """APuDAE adaptive purification (Kalaria et al., arXiv 2208.13838), unrolled in the `purifier` graph."""

    steps: int = Field(ge=0)
    """Adam steps on the APuDAE loss; 0 only for a purifier that reforms (D(x) alone)."""
    lr: float = Field(gt=0)
    epsilon: float = Field(ge=0)
    """Scale of the uniform noise added per step, times min(((r - mu) / (2 sigma))^2, 4)."""
    mu: float
    """Mean clean reconstruction error, sum over C,H,W of (clip(D(x), 0, 1) - x)^2."""
    sigma: float = Field(gt=0)
    """Standard deviation of that error over clean held-out images."""
    statistics_data: str
    """Which clean images mu and sigma were measured on."""
    dae_training_noise_sigma: float = Field(ge=0)
    """Std of the Gaussian noise the denoising autoencoder was trained to remove."""
    reform: bool = False
    """The classifier receives the DAE's reconstruction of the purified image, not the image itself: the DAE
    was trained further, with a classifier-guided loss, to undo perturbations (HGD, Liao et al. 2018; the
    manifest's `training` says on what)."""

    @model_validator(mode="after")
    def _steps_or_reform(self) -> PurifierSpec:
        if self.steps == 0 and not self.reform:
            raise ValueError("a purifier with 0 steps must reform: it would hand the classifier its input")
        return self


class DefenseSpec(_Strict):
    """A training-time defense baked into the weights: the service runs such a bundle like any other, but
    users and reviewers must be able to tell which defense they are served and with what settings."""

    name: str
    """Short name, as the robustness tables use it (e.g. "AMC", "Deep Defense")."""
    reference: str
    """The paper (and reference code) the recipe follows."""
    follows: str
    """How closely: the paper's algorithm, or a reproduction of it where the paper is not at hand."""
    settings: dict[str, float | int | str | list[str]]
    """The defense's hyper-parameters as trained."""


class Calibration(_Strict):
    """Thresholds of the "looks adversarial" flag and the clean data they were fitted on.

    Every score is oriented so that larger means more suspicious; an input is flagged for a score when it
    exceeds that score's threshold, and flagged overall when any score does.
    """

    target_false_positive_rate: float = Field(gt=0, lt=1)
    thresholds: dict[str, float]
    samples: int = Field(ge=1)
    """Ensemble size N the scores were computed with."""
    data: str
    """Which clean images were used (split name and size)."""
    num_images: int = Field(ge=1)
    calibration_false_positive_rate: float
    """Combined flag rate on the calibration images themselves."""


class DataSplit(_Strict):
    """How the training/calibration/test images were drawn, so the numbers can be reproduced."""

    dataset: str
    source: str
    seed: int
    stratified: bool
    train: int
    calibration: int
    test: int


class AttackResult(_Strict):
    """One real attack, run with a maintained library, and how the served pipeline fared on its output."""

    attack: str
    library: str
    threat_model: str
    norm: str
    epsilon: float
    steps: int
    step_size: float
    images: int
    undefended_accuracy: float
    """Accuracy of the model the attack was crafted on."""
    defended_accuracy: float
    """Accuracy of the served pipeline (purification + ensemble) on the same adversarial images."""
    flag_rate: float
    defended_or_flagged: float
    """Share of adversarial images answered correctly or flagged: the attack failed on those."""


class PrecisionCheck(_Strict):
    """How the reduced-precision `ensemble_fp16` graph compares with the float32 one it was converted from."""

    max_probability_diff: float = Field(ge=0)
    """Largest |p_fp16 - p_fp32| over the images below, both graphs with their noise pinned to 0."""
    tolerance: float
    """The conversion is refused above this."""
    clean_accuracy: float
    flag_rate_clean: float
    """Through the served pipeline with the fp16 ensemble, on the test images `Metrics` were measured on."""
    images: int


class Metrics(_Strict):
    """Numbers measured on the exported graphs through the service's own engine."""

    clean_accuracy: float
    test_images: int
    samples: int
    flag_rate_clean: float
    """Share of clean test images the combined flag fires on (the measured false-positive rate)."""
    measured_with: str
    attacks: list[AttackResult] = Field(default_factory=list)
    fp16: PrecisionCheck | None = None
    """Set with the `ensemble_fp16` graph."""


class Manifest(_Strict):
    """Everything the service needs to know about one model bundle."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str = Field(pattern=r"^[0-9]+$")
    description: str
    created_at: datetime
    produced_by: str
    """The exact command that produced this bundle."""
    input: InputSpec
    normalization: Normalization
    classes: list[str] = Field(min_length=2)
    rse: RSESpec
    graphs: dict[str, GraphFile]
    """`ensemble`: images [B,C,H,W] float32 + samples int64 scalar -> probabilities [B,N,K];
    `purifier` (optional): images -> purified images, reconstruction error before and after;
    `screen` (optional, with a purifier): images -> the purifier's `error_before` alone, one DAE forward,
    for adaptive compute;
    `ensemble_fp16` (optional): the ensemble with float16 weights and activations (float32 I/O), served
    instead of `ensemble` when the service runs at fp16 precision."""
    purifier: PurifierSpec | None = None
    defense: DefenseSpec | None = None
    """Set for bundles hardened at training time (AMC, Deep Defense, ...); None for RSE / APuDAE bundles,
    whose defense is in the graphs and described by `rse` and `purifier`."""
    calibration: Calibration
    data: DataSplit
    metrics: Metrics
    training: dict[str, bool | float | int | str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_ensemble(self) -> Manifest:
        if "ensemble" not in self.graphs:
            raise ValueError("a bundle needs an 'ensemble' graph")
        if (self.purifier is None) != ("purifier" not in self.graphs):
            raise ValueError("a 'purifier' graph and the purifier settings come together")
        if "screen" in self.graphs and "purifier" not in self.graphs:
            raise ValueError("a 'screen' graph needs the 'purifier' graph it was cut from")
        unknown = set(self.graphs) - {"ensemble", "purifier", "screen", FP16_ENSEMBLE}
        if unknown:
            raise ValueError(f"unknown graph roles {sorted(unknown)}")
        if (FP16_ENSEMBLE in self.graphs) != (self.metrics.fp16 is not None):
            raise ValueError("an 'ensemble_fp16' graph and its measured precision check come together")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(bundle_dir: Path, *, verify: bool = True) -> Manifest:
    """Read and validate a bundle's manifest; with `verify`, refuse any graph whose sha256 differs."""
    path = bundle_dir / MANIFEST_FILENAME
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"{bundle_dir}: no {MANIFEST_FILENAME}") from exc
    except ValueError as exc:
        raise ManifestError(f"{path}: invalid manifest: {exc}") from exc
    if verify:
        for role, graph in manifest.graphs.items():
            graph_path = bundle_dir / graph.path
            if not graph_path.is_file():
                raise ManifestError(f"{bundle_dir}: graph '{role}' file {graph.path} is missing")
            actual = sha256_file(graph_path)
            if actual != graph.sha256:
                raise ManifestError(
                    f"{bundle_dir}: graph '{role}' ({graph.path}) has sha256 {actual}, "
                    f"manifest says {graph.sha256}; refusing to serve a modified bundle"
                )
    return manifest
