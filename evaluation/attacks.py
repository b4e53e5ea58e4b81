"""The attacks, all from the Adversarial Robustness Toolbox (ART): one entry per attack with a shared
interface, so the runner never dispatches on names.

An attack is run at a list of strengths: the L∞ budget ε for bounded attacks (FGSM, PGD, Square), the
trade-off constant c for Carlini-Wagner, none for the minimum-norm DeepFool and HopSkipJump (their
perturbation size is the result, reported as a norm).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluation.config import EvalConfig

Settings = dict[str, Any]


@dataclass(frozen=True)
class Attack:
    name: str
    strength: str | None
    """What the strengths are: "epsilon", "constant", or None for a minimum-norm attack."""
    settings: Callable[[EvalConfig], Settings]
    """Every setting the attack runs with: recorded with each result and part of its cache key."""
    build: Callable[[Any, float | None, Settings], Any]
    """(ART estimator, strength, settings) -> the ART attack."""

    def strengths(self, config: EvalConfig, budgets: tuple[float, ...], threat: str) -> list[float | None]:
        if self.strength == "epsilon":
            return list(budgets)
        if self.strength == "constant":
            return list(config.cw.adaptive_constants if threat == "adaptive" else config.cw.constants)
        return [None]


def _fgsm(estimator: Any, epsilon: float | None, settings: Settings) -> Any:
    from art.attacks.evasion import FastGradientMethod

    return FastGradientMethod(estimator, norm=np.inf, eps=epsilon, batch_size=settings["batch_size"])


def _pgd_settings(config: EvalConfig) -> Settings:
    # NOTE: Madry et al.'s step size, 2.5 ε / steps, lets the iterate cross the ball from a random start.
    return {
        "steps": config.pgd_steps,
        "step_size": "2.5 ε / steps",
        "random_starts": 1,
        "batch_size": config.batch_size,
    }


def _iterative_linf(
    attack_class: Any, estimator: Any, epsilon: float | None, reach: float, settings: Settings, **own: Any
) -> Any:
    """An ART iterative L∞ attack (PGD, MI-FGSM) from the settings they share; its steps together can travel
    `reach` times ε."""
    assert epsilon is not None
    return attack_class(
        estimator,
        norm=np.inf,
        eps=epsilon,
        eps_step=reach * epsilon / settings["steps"],
        max_iter=settings["steps"],
        batch_size=settings["batch_size"],
        verbose=False,
        **own,
    )


def _pgd(estimator: Any, epsilon: float | None, settings: Settings) -> Any:
    from art.attacks.evasion import ProjectedGradientDescent

    return _iterative_linf(
        ProjectedGradientDescent,
        estimator,
        epsilon,
        2.5,
        settings,
        num_random_init=settings["random_starts"],
    )


def _bim_settings(config: EvalConfig) -> Settings:
    # NOTE: the APuDAE reference code's gray-box attack (dvij542/ae-adversary-purifier, purify.py): 7 steps
    # of 2/255 at ε = 8/255, i.e. ε / 4, no random start. Kept as written there, so that our gray-box figure
    # and the seed's are the same attack; PGD above is the stronger one.
    return {"steps": 7, "step_size": "ε / 4", "random_starts": 0, "batch_size": config.batch_size}


def _bim(estimator: Any, epsilon: float | None, settings: Settings) -> Any:
    from art.attacks.evasion import BasicIterativeMethod

    assert epsilon is not None
    return BasicIterativeMethod(
        estimator,
        eps=epsilon,
        eps_step=epsilon / 4,
        max_iter=settings["steps"],
        batch_size=settings["batch_size"],
        verbose=False,
    )


def _mim_settings(config: EvalConfig) -> Settings:
    # NOTE: Dong et al.'s settings: 10 steps of ε / steps, decay μ = 1.0, no random start.
    return {
        "steps": config.mim_steps,
        "step_size": "ε / steps",
        "decay": 1.0,
        "batch_size": config.batch_size,
    }


def _momentum_iterative(estimator: Any, epsilon: float | None, settings: Settings) -> Any:
    from art.attacks.evasion import MomentumIterativeMethod

    return _iterative_linf(
        MomentumIterativeMethod, estimator, epsilon, 1.0, settings, decay=settings["decay"]
    )


def _cw_settings(config: EvalConfig) -> Settings:
    cw = config.cw
    return {
        "confidence": cw.confidence,
        "binary_search_steps": 1,
        "max_iter": cw.max_iter,
        "learning_rate": cw.learning_rate,
        "max_halving": cw.max_halving,
        "max_doubling": cw.max_doubling,
        "batch_size": config.batch_size,
    }


def _carlini_wagner(estimator: Any, constant: float | None, settings: Settings) -> Any:
    from art.attacks.evasion import CarliniL2Method

    return CarliniL2Method(estimator, initial_const=constant, verbose=False, **settings)


def _deepfool_settings(config: EvalConfig) -> Settings:
    return {
        "max_iter": config.deepfool_max_iter,
        "epsilon": config.deepfool_overshoot,
        "nb_grads": 10,
        "batch_size": config.batch_size,
    }


def _deepfool(estimator: Any, _: float | None, settings: Settings) -> Any:
    from art.attacks.evasion import DeepFool

    return DeepFool(estimator, verbose=False, **settings)


def _square_settings(config: EvalConfig) -> Settings:
    return {
        "max_iter": config.square_max_iter,
        "p_init": 0.8,
        "nb_restarts": 1,
        "batch_size": config.batch_size,
    }


def _square(estimator: Any, epsilon: float | None, settings: Settings) -> Any:
    from art.attacks.evasion import SquareAttack

    return SquareAttack(estimator, norm=np.inf, eps=epsilon, verbose=False, **settings)


def _hsj_settings(config: EvalConfig) -> Settings:
    return {
        "max_iter": config.hsj_max_iter,
        "max_eval": config.hsj_max_eval,
        "init_eval": config.hsj_init_eval,
        "init_size": 100,
        "batch_size": 64,
    }


def _hop_skip_jump(estimator: Any, _: float | None, settings: Settings) -> Any:
    from art.attacks.evasion import HopSkipJump

    return HopSkipJump(estimator, targeted=False, norm=np.inf, verbose=False, **settings)


FGSM = Attack("FGSM", "epsilon", lambda c: {"batch_size": c.batch_size}, _fgsm)
PGD = Attack("PGD", "epsilon", _pgd_settings, _pgd)
BIM = Attack("BIM", "epsilon", _bim_settings, _bim)
MIM = Attack("MI-FGSM", "epsilon", _mim_settings, _momentum_iterative)
CW = Attack("CW-L2", "constant", _cw_settings, _carlini_wagner)
DEEPFOOL = Attack("DeepFool", None, _deepfool_settings, _deepfool)
SQUARE = Attack("Square", "epsilon", _square_settings, _square)
HOP_SKIP_JUMP = Attack("HopSkipJump", None, _hsj_settings, _hop_skip_jump)

WHITE_BOX = (FGSM, PGD, CW, DEEPFOOL)
"""Gradient-based: run in the transfer and adaptive threat models."""
BLACK_BOX = (SQUARE, HOP_SKIP_JUMP)
"""Score- (Square) and decision-based (HopSkipJump): run over HTTP."""
TRANSFERABLE = (MIM,)
"""Momentum-iterative PGD (Dong et al., CVPR 2018): the transfer attack of the "surrogates" threat model."""
SEED_GRAY_BOX = (BIM,)
"""APuDAE's own gray-box attack, run in the threat models whose attacker does not know the defense: crafted
on the undefended classifier, and on the bundle's own weights with the noise off (the seed's setting)."""
BY_THREAT = {
    "transfer": (*WHITE_BOX, *SEED_GRAY_BOX),
    "known-weights": (*WHITE_BOX, *SEED_GRAY_BOX),
    "surrogates": TRANSFERABLE,
    "adaptive": WHITE_BOX,
    "blackbox": BLACK_BOX,
}
ALL = (*WHITE_BOX, *SEED_GRAY_BOX, *TRANSFERABLE, *BLACK_BOX)


def run_attack(attack: Any, images: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """The attack's adversarial images (float32, clipped to [0, 1]) for `images`, untargeted on `labels`."""
    import torch

    np.random.seed(seed)
    torch.manual_seed(seed)
    adversarial = attack.generate(x=images.astype(np.float32), y=labels)
    return np.clip(adversarial, 0.0, 1.0).astype(np.float32)
