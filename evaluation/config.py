"""Named presets of the evaluation: how many images, which attack settings, which threat models.

`standard` is what `make eval` runs and docs/ROBUSTNESS.md reports; `quick` exercises every code path on a
handful of images for CI. Every value lands in results.json, so a figure always comes with its budget.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

THREATS = ("transfer", "adaptive", "blackbox")
_NOT_SHAPING = {"preset", "threats", "budgets", "sanity"}
PurifierGradient = Literal["bpda", "exact"]


@dataclass(frozen=True)
class CWSettings:
    """Carlini-Wagner L2 as the RSE paper's comparison runs it (reference code xuanqing94/RobustNet, cw.py):
    untargeted, confidence κ = 0, a fixed trade-off constant c per run (no binary search) swept over a list."""

    constants: tuple[float, ...] = (0.1, 1.0, 10.0)
    confidence: float = 0.0
    max_iter: int = 50
    learning_rate: float = 0.01
    max_halving: int = 2
    max_doubling: int = 2


@dataclass(frozen=True)
class EvalConfig:
    preset: str
    transfer_images: int
    adaptive_images: int
    minimum_norm_images: int
    """Images for C&W and DeepFool (minimum-norm attacks, the costly ones)."""
    blackbox_images: int
    hsj_images: int
    threats: tuple[str, ...] = THREATS
    budgets: tuple[float, ...] | None = None
    """L∞ budgets; None: the bundle recipe's (MNIST 0.1, 0.2, 0.3; CIFAR-10 2, 4, 8 /255)."""
    surrogate_epochs: int | None = None
    """Epochs of the undefended classifier; None: the recipe's."""
    samples: int | None = None
    """Ensemble size N of the evaluated systems; None: the bundle's default, as served."""
    pgd_steps: int = 20
    eot_samples: int = 4
    """k: RSE noise draws whose softmax is averaged for every gradient (Expectation over Transformation)."""
    purifier_gradient: PurifierGradient = "bpda"
    cw: CWSettings = field(default_factory=CWSettings)
    deepfool_max_iter: int = 50
    deepfool_overshoot: float = 0.02
    square_max_iter: int = 300
    hsj_max_iter: int = 5
    hsj_max_eval: int = 100
    hsj_init_eval: int = 20
    sanity: bool = True
    """Run the extra attacks behind the sanity checks (large ε, 2x steps, 2x EoT samples)."""
    sanity_images: int = 50
    batch_size: int = 50
    seed: int = 0

    def key(self) -> str:
        """Short hash of the settings that shape an attack's result: a cached cell is reused only under the
        same ones. Image counts, budgets and the choice of threat models are left out (a cell's own key
        names its images and strength), so widening a run re-runs only the new cells."""
        shaping = {
            k: v for k, v in asdict(self).items() if k not in _NOT_SHAPING and not k.endswith("_images")
        }
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]


PRESETS: dict[str, EvalConfig] = {
    "standard": EvalConfig(
        preset="standard",
        transfer_images=200,
        adaptive_images=100,
        minimum_norm_images=40,
        blackbox_images=20,
        hsj_images=5,
    ),
    "quick": EvalConfig(
        preset="quick",
        budgets=(0.3,),
        surrogate_epochs=2,
        transfer_images=40,
        adaptive_images=8,
        minimum_norm_images=4,
        blackbox_images=4,
        hsj_images=2,
        pgd_steps=10,
        eot_samples=2,
        cw=CWSettings(constants=(1.0,), max_iter=5, max_halving=1, max_doubling=1),
        deepfool_max_iter=5,
        square_max_iter=10,
        hsj_max_iter=1,
        hsj_max_eval=20,
        hsj_init_eval=5,
        sanity_images=8,
        batch_size=40,
    ),
}


def preset(name: str, **overrides: object) -> EvalConfig:
    """A named preset with the non-None overrides applied."""
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
