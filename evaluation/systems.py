"""The systems one run compares, each with two faces.

An RSE/APuDAE bundle gives four: the undefended classifier, RSE only, purifier only, purifier + RSE. A bundle
hardened at training time (AMC, Deep Defense, ...) gives two: the undefended classifier and its own
deterministic classifier, named for its defense, so that results of different bundles never share a name
for different models.

- `outcome(images)`: what the system answers, computed on the exported ONNX graphs through the service's own
  pipeline code (the undefended classifier, which is not in the bundle, runs in torch), with the flag scores
  and the bundle's calibrated thresholds applied to the scores the system has.
- `adaptive_model()`: a differentiable torch model of the same system for white-box attacks: the classifier
  twin, averaged over k noise draws (EoT) where it has RSE noise, behind the purifier passed straight through
  (BPDA: the served purifier graph forward, identity backward) or differentiated exactly through its T
  unrolled steps.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.calibrate import flagged
from models.purify import AdaptivePurifier, clipped_error
from models.rse import ensemble_rows
from service.manifest import Manifest
from service.pipeline import run_pipeline_batched
from service.runtime import EnsembleEngine, PurifierEngine, ScreenEngine
from service.scoring import purification_scores, summarize

UNDEFENDED, RSE, PURIFIER, DEFENDED = "undefended", "rse", "purifier", "purifier+rse"
LABELS = {
    UNDEFENDED: "undefended classifier",
    RSE: "RSE only",
    PURIFIER: "purifier only",
    DEFENDED: "purifier + RSE (served)",
}
"""How one bundle's report names its systems."""
DEFENSE_NAMES = {UNDEFENDED: "undefended", RSE: "RSE", PURIFIER: "APuDAE", DEFENDED: "RSE+APuDAE"}
"""How a comparison across bundles names them: by the defenses at work."""
TWIN_SETTINGS = ("eot_samples", "purifier_gradient")
"""The run settings an adaptive model of a bundle with noise or a purifier depends on."""


@dataclass(frozen=True)
class Outcome:
    predictions: np.ndarray
    """[B] class index answered."""
    scores: dict[str, np.ndarray]
    """Flag scores, larger is more suspicious; empty for a system without a flag."""
    flagged: np.ndarray
    """[B] bool: the combined flag fired."""

    def __len__(self) -> int:
        return len(self.predictions)


def log_mean_softmax(logits: torch.Tensor) -> torch.Tensor:
    """[B, n, K] logits of n passes -> [B, K] log of their mean softmax: how RSE and every ensemble here
    combine passes (probabilities, not logits), in a form whose gradient attacks can use."""
    return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=1) - math.log(logits.shape[1])


class ExpectationOverNoise(nn.Module):
    """log of the softmax averaged over k forward passes: each pass draws its own RSE noise, so the gradient
    of this output is the EoT gradient of the ensemble's decision. With `mirrored`, the passes are the
    graph's (`ensemble_rows`: every odd one sees the image flipped), so an even k sees both views."""

    def __init__(self, model: nn.Module, samples: int, *, mirrored: bool = False) -> None:
        super().__init__()
        self.model = model
        self.samples = samples
        self.mirrored = mirrored

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = ensemble_rows(x, self.samples, mirrored=self.mirrored)
        return log_mean_softmax(self.model(rows).view(len(x), self.samples, -1))


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, engine: PurifierEngine) -> torch.Tensor:  # type: ignore[override]
        purified, _, _ = engine.run(x.detach().cpu().numpy())
        return torch.from_numpy(purified).to(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


class StraightThroughPurifier(nn.Module):
    """BPDA (Athalye et al. 2018): forward through the served purifier graph, backward as the identity,
    i.e. x + (purify(x) - x).detach() with purify the very graph the service runs."""

    def __init__(self, engine: PurifierEngine) -> None:
        super().__init__()
        self.engine = engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(x, self.engine)


class ReformingStraightThrough(nn.Module):
    """BPDA for a purifier that reforms (`PurifierSpec.reform`): forward through the served graph, which
    returns D(x + delta); backward through the twin's D at x, only the Adam shift delta taken as the identity
    (zero with no steps, as `cifar10-rse-hgd` runs, and for images the APuDAE loss leaves alone). The
    identity through D as well would ignore the very part trained to undo perturbations, and so overstate
    robustness."""

    def __init__(self, engine: PurifierEngine, dae: nn.Module) -> None:
        super().__init__()
        self.engine = engine
        self.dae = dae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reformed = self.dae(x).clamp(0.0, 1.0)
        served = torch.from_numpy(self.engine.run(x.detach().cpu().numpy())[0]).to(x)
        return reformed + (served - reformed).detach()


class ExactPurifier(nn.Module):
    """The twin purifier's output; autograd differentiates through all T unrolled Adam steps (second-order
    terms of the DAE included, since its VJP is written in plain torch ops)."""

    def __init__(self, purifier: AdaptivePurifier) -> None:
        super().__init__()
        self.purifier = purifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.purifier(x)[0]


class FlagAware(nn.Module):
    """A system's decision (K log-probability columns) and, as one more column, the reconstruction z-score
    of its input under the twin DAE: the served flag's strongest score, differentiable."""

    def __init__(self, model: nn.Module, purifier: AdaptivePurifier) -> None:
        super().__init__()
        self.model = model
        self.purifier = purifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        config = self.purifier.config
        z = (clipped_error(x, self.purifier.dae(x)) - config.mu) / config.sigma
        return torch.cat([self.model(x), z[:, None]], dim=1)


class FlagAwareLoss(nn.Module):
    """What a detector-aware PGD maximises: cross-entropy of the class columns minus `weight` times how far
    the z-score column lies above `threshold`, so the example turns the label while it stays unflagged."""

    def __init__(self, threshold: float, weight: float = 1.0) -> None:
        super().__init__()
        self.threshold = threshold
        self.weight = weight

    def forward(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # NOTE: ART hands custom losses one-hot labels over every output column.
        labels = labels.argmax(dim=1) if labels.dim() > 1 else labels
        penalty = torch.relu(outputs[:, -1] - self.threshold).mean()
        return F.cross_entropy(outputs[:, :-1], labels) - self.weight * penalty


def torch_probabilities(model: nn.Module, images: np.ndarray, batch: int = 250) -> np.ndarray:
    """softmax(model(images)) in batches, no gradient."""
    with torch.no_grad():
        parts = [
            torch.softmax(model(torch.from_numpy(images[i : i + batch])), dim=-1).numpy()
            for i in range(0, len(images), batch)
        ]
    return np.concatenate(parts)


def has_noise(manifest: Manifest) -> bool:
    """Whether the bundle's classifier draws RSE noise (training-time defenses export theirs without)."""
    return manifest.rse.sigma_init > 0 or manifest.rse.sigma_inner > 0


def slug(name: str) -> str:
    """A defense's name as a system key: "Deep Defense" -> "deep-defense"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class System(ABC):
    name: str
    label: str
    """How this bundle's report names the system."""
    defense: str
    """How a comparison across bundles names it."""
    http_purify: bool | None = None
    """The `purify` option under which the service serves this system; None where it does not serve it (the
    black-box threat model can only attack what the service serves)."""
    twin_settings: tuple[str, ...] = ()
    """The run settings (EvalConfig fields) its adaptive model depends on: recorded with, and keying the cache
    of, every adaptive cell crafted on it."""

    @abstractmethod
    def outcome(self, images: np.ndarray) -> Outcome: ...

    @abstractmethod
    def adaptive_model(self, eot_samples: int, purifier_gradient: str) -> nn.Module:
        """Differentiable model whose output's argmax is the system's decision (logits or log-probs);
        `eot_samples` RSE draws per gradient, `purifier_gradient` "bpda" or "exact"."""


class Undefended(System):
    name, label, defense = UNDEFENDED, LABELS[UNDEFENDED], DEFENSE_NAMES[UNDEFENDED]

    def __init__(self, classifier: nn.Module) -> None:
        self.classifier = classifier.eval()

    def outcome(self, images: np.ndarray) -> Outcome:
        predictions = torch_probabilities(self.classifier, images).argmax(axis=1)
        return Outcome(predictions, {}, np.zeros(len(images), dtype=bool))

    def adaptive_model(self, eot_samples: int, purifier_gradient: str) -> nn.Module:
        return self.classifier


@dataclass
class BundleSystems:
    """Everything the bundle-backed systems share."""

    manifest: Manifest
    ensemble: EnsembleEngine
    purifier_engine: PurifierEngine | None
    screen: ScreenEngine | None
    """With `skip_z`, the served adaptive compute: who skips purification (None: fixed T for all)."""
    skip_z: float | None
    twin_classifier: nn.Module
    twin_purifier: AdaptivePurifier | None
    surrogate: nn.Module
    samples: int

    @property
    def thresholds(self) -> dict[str, float]:
        return self.manifest.calibration.thresholds

    def classifier_model(self, eot_samples: int) -> nn.Module:
        """The twin classifier as an attack sees the ensemble: averaged over k noise draws (EoT) where it
        has noise or mirrored passes; a deterministic one as it is (k identical passes would only cost k
        times more)."""
        mirrored = self.manifest.rse.mirrored_passes
        if not (has_noise(self.manifest) or mirrored):
            return self.twin_classifier
        return ExpectationOverNoise(self.twin_classifier, eot_samples, mirrored=mirrored)

    def purify_module(self, gradient: str) -> nn.Module:
        if self.purifier_engine is None or self.twin_purifier is None:
            raise ValueError(f"{self.manifest.name} has no purifier")
        if gradient == "exact":
            return ExactPurifier(self.twin_purifier)
        if self.twin_purifier.config.reform:
            return ReformingStraightThrough(self.purifier_engine, self.twin_purifier.dae)
        return StraightThroughPurifier(self.purifier_engine)

    def pipeline(self, images: np.ndarray, purify: bool) -> Outcome:
        result = run_pipeline_batched(
            self.ensemble,
            self.purifier_engine,
            self.manifest.purifier,
            images,
            self.samples,
            purify=purify,
            screen=self.screen,
            skip_z=self.skip_z,
        )
        return Outcome(result.summary.class_index, result.scores, flagged(result.scores, self.thresholds))


class EnsembleOnly(System):
    """The bundle's ensemble graph without purification: RSE's self-ensemble, or, for a bundle hardened at
    training time, its deterministic classifier, named for its defense ("amc", label "AMC")."""

    http_purify = False

    def __init__(self, bundle: BundleSystems) -> None:
        self.bundle = bundle
        defense = bundle.manifest.defense
        if defense is None:
            self.name, self.label, self.defense = RSE, LABELS[RSE], DEFENSE_NAMES[RSE]
        else:
            self.name, self.label, self.defense = slug(defense.name), defense.name, defense.name
        if has_noise(bundle.manifest) or bundle.purifier_engine is not None:
            self.twin_settings = TWIN_SETTINGS

    def outcome(self, images: np.ndarray) -> Outcome:
        return self.bundle.pipeline(images, purify=False)

    def adaptive_model(self, eot_samples: int, purifier_gradient: str) -> nn.Module:
        return self.bundle.classifier_model(eot_samples)


class PurifierOnly(System):
    """The bundle's purifier in front of the undefended classifier: APuDAE's own setting (a plain classifier)."""

    name, label, defense = PURIFIER, LABELS[PURIFIER], DEFENSE_NAMES[PURIFIER]
    twin_settings = TWIN_SETTINGS

    def __init__(self, bundle: BundleSystems) -> None:
        self.bundle = bundle

    def outcome(self, images: np.ndarray) -> Outcome:
        spec, engine = self.bundle.manifest.purifier, self.bundle.purifier_engine
        assert spec is not None and engine is not None
        purified, before = [], []
        for start in range(0, len(images), 100):
            out, error_before, _ = engine.run(images[start : start + 100])
            purified.append(out)
            before.append(error_before)
        on_purified = summarize(torch_probabilities(self.bundle.surrogate, np.concatenate(purified))[:, None])
        on_raw = summarize(torch_probabilities(self.bundle.surrogate, images)[:, None])
        scores = purification_scores(on_purified, on_raw, np.concatenate(before), spec.mu, spec.sigma)
        return Outcome(on_purified.class_index, scores, flagged(scores, self.bundle.thresholds))

    def adaptive_model(self, eot_samples: int, purifier_gradient: str) -> nn.Module:
        # NOTE: the classifier is deterministic; the purifier's own noise is redrawn at every attack step.
        return nn.Sequential(self.bundle.purify_module(purifier_gradient), self.bundle.surrogate)


class Defended(System):
    """What the service serves: purifier, then the RSE self-ensemble."""

    name, label, defense = DEFENDED, LABELS[DEFENDED], DEFENSE_NAMES[DEFENDED]
    http_purify = True
    twin_settings = TWIN_SETTINGS

    def __init__(self, bundle: BundleSystems) -> None:
        self.bundle = bundle

    def outcome(self, images: np.ndarray) -> Outcome:
        return self.bundle.pipeline(images, purify=True)

    def adaptive_model(self, eot_samples: int, purifier_gradient: str) -> nn.Module:
        # NOTE: one purifier draw per image and step, then k RSE draws on it. k draws of the T-step purifier
        # would cost k times more, for noise far smaller than RSE's (at most 4ε = 2.8/255 per pixel and step,
        # against sigma = 0.2 on the pixels).
        return nn.Sequential(
            self.bundle.purify_module(purifier_gradient), self.bundle.classifier_model(eot_samples)
        )
