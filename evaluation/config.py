"""Named presets of the evaluation: how many images, which attack settings, which threat models.

`standard` is what `make eval` runs and docs/ROBUSTNESS.md reports; `quick` exercises every code path on a
handful of images for CI. Every value lands in results.json, so a figure always comes with its budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

THREATS = ("transfer", "known-weights", "surrogates", "adaptive", "blackbox")
"""transfer: crafted on the undefended classifier; known-weights: crafted on the bundle's own classifier with
its noise off, the purifier unknown (APuDAE's gray-box setting); surrogates: crafted on an ensemble of other
architectures (Seiler et al. 2020); adaptive: white-box on each system's twin; blackbox: through the HTTP
API."""
PurifierGradient = Literal["bpda", "exact"]


@dataclass(frozen=True)
class CWSettings:
    """Carlini-Wagner L2 as the RSE paper's comparison runs it (reference code xuanqing94/RobustNet, cw.py):
    untargeted, confidence κ = 0, a fixed trade-off constant c per run (no binary search) swept over a list."""

    constants: tuple[float, ...] = (0.1, 1.0, 10.0)
    """c for the transfer and known-weights threat models (crafting on one deterministic classifier is cheap)."""
    adaptive_constants: tuple[float, ...] = (10.0,)
    """c against the systems' twins, where every step costs k RSE draws and a purification: the strongest."""
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
    attacks: tuple[str, ...] | None = None
    """Names of the attacks to run (FGSM, PGD, CW-L2, DeepFool, MI-FGSM, Square, HopSkipJump); None: all."""
    budgets: tuple[float, ...] | None = None
    """L∞ budgets; None: the bundle recipe's (MNIST 0.1, 0.2, 0.3; CIFAR-10 2, 4, 8 /255)."""
    surrogate_epochs: int | None = None
    """Epochs of the undefended classifier; None: the recipe's."""
    samples: int | None = None
    """Ensemble size N of the evaluated systems; None: the bundle's default, as served."""
    purify_skip_z: float | None = 0.0
    """Adaptive compute of the purifier + RSE system, as the service runs it by default
    (`DEFENDED_PURIFY_SKIP_Z`): inputs whose reconstruction z-score is at or below it skip purification.
    None: every input is purified for T steps."""
    pgd_steps: int = 20
    mim_steps: int = 10
    """Iterations of the momentum-iterative attack on the surrogates (Dong et al. use 10)."""
    eot_samples: int = 4
    """k: RSE noise draws whose softmax is averaged for every gradient (Expectation over Transformation)."""
    purifier_gradient: PurifierGradient = "bpda"
    cw: CWSettings = field(default_factory=CWSettings)
    deepfool_max_iter: int = 50
    deepfool_overshoot: float = 0.02
    square_max_iter: int = 200
    hsj_max_iter: int = 5
    hsj_max_eval: int = 100
    hsj_init_eval: int = 20
    sanity: bool = True
    """Run the extra attacks behind the sanity checks (large ε, 2x steps, 2x EoT samples)."""
    sanity_images: int = 50
    batch_size: int = 50
    seed: int = 0


PRESETS: dict[str, EvalConfig] = {
    "standard": EvalConfig(
        preset="standard",
        transfer_images=200,
        adaptive_images=100,
        minimum_norm_images=30,
        blackbox_images=16,
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
        cw=CWSettings(constants=(1.0,), adaptive_constants=(1.0,), max_iter=5, max_halving=1, max_doubling=1),
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
