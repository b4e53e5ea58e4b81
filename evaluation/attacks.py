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

Builder = Callable[[Any, float | None, EvalConfig], tuple[Any, dict[str, Any]]]


@dataclass(frozen=True)
class Attack:
    name: str
    needs_gradients: bool
    """White-box (transfer and adaptive threat models) or score/decision-based (black-box, over HTTP)."""
    strength: str | None
    """What the strengths are: "epsilon", "constant", or None for a minimum-norm attack."""
    build: Builder

    def strengths(self, config: EvalConfig, budgets: tuple[float, ...]) -> list[float | None]:
        if self.strength == "epsilon":
            return list(budgets)
        if self.strength == "constant":
            return list(config.cw.constants)
        return [None]


def _fgsm(estimator: Any, epsilon: float | None, config: EvalConfig) -> tuple[Any, dict[str, Any]]:
    from art.attacks.evasion import FastGradientMethod

    return FastGradientMethod(estimator, norm=np.inf, eps=epsilon, batch_size=config.batch_size), {}


def _pgd(estimator: Any, epsilon: float | None, config: EvalConfig) -> tuple[Any, dict[str, Any]]:
    from art.attacks.evasion import ProjectedGradientDescent

    assert epsilon is not None
    # NOTE: Madry et al.'s step size, 2.5 ε / steps, lets the iterate cross the ball from a random start.
    params = {"steps": config.pgd_steps, "step_size": 2.5 * epsilon / config.pgd_steps, "random_starts": 1}
    attack = ProjectedGradientDescent(
        estimator,
        norm=np.inf,
        eps=epsilon,
        eps_step=params["step_size"],
        max_iter=config.pgd_steps,
        num_random_init=1,
        batch_size=config.batch_size,
        verbose=False,
    )
    return attack, params


def _carlini_wagner(estimator: Any, constant: float | None, config: EvalConfig) -> tuple[Any, dict[str, Any]]:
    from art.attacks.evasion import CarliniL2Method

    cw = config.cw
    params = {
        "constant": constant,
        "confidence": cw.confidence,
        "binary_search_steps": 1,
        "max_iter": cw.max_iter,
        "learning_rate": cw.learning_rate,
    }
    attack = CarliniL2Method(
        estimator,
        confidence=cw.confidence,
        learning_rate=cw.learning_rate,
        binary_search_steps=1,
        max_iter=cw.max_iter,
        initial_const=constant,
        max_halving=cw.max_halving,
        max_doubling=cw.max_doubling,
        batch_size=config.batch_size,
        verbose=False,
    )
    return attack, params


def _deepfool(estimator: Any, _: float | None, config: EvalConfig) -> tuple[Any, dict[str, Any]]:
    from art.attacks.evasion import DeepFool

    params = {"max_iter": config.deepfool_max_iter, "overshoot": config.deepfool_overshoot, "nb_grads": 10}
    attack = DeepFool(
        estimator,
        max_iter=config.deepfool_max_iter,
        epsilon=config.deepfool_overshoot,
        nb_grads=10,
        batch_size=config.batch_size,
        verbose=False,
    )
    return attack, params


def _square(estimator: Any, epsilon: float | None, config: EvalConfig) -> tuple[Any, dict[str, Any]]:
    from art.attacks.evasion import SquareAttack

    params = {"max_iter": config.square_max_iter, "p_init": 0.8, "restarts": 1}
    attack = SquareAttack(
        estimator,
        norm=np.inf,
        eps=epsilon,
        max_iter=config.square_max_iter,
        p_init=0.8,
        nb_restarts=1,
        batch_size=config.batch_size,
        verbose=False,
    )
    return attack, params


def _hop_skip_jump(estimator: Any, _: float | None, config: EvalConfig) -> tuple[Any, dict[str, Any]]:
    from art.attacks.evasion import HopSkipJump

    params = {
        "norm": "Linf",
        "max_iter": config.hsj_max_iter,
        "max_eval": config.hsj_max_eval,
        "init_eval": config.hsj_init_eval,
    }
    attack = HopSkipJump(
        estimator,
        targeted=False,
        norm=np.inf,
        max_iter=config.hsj_max_iter,
        max_eval=config.hsj_max_eval,
        init_eval=config.hsj_init_eval,
        init_size=100,
        batch_size=64,
        verbose=False,
    )
    return attack, params


FGSM = Attack("FGSM", True, "epsilon", _fgsm)
PGD = Attack("PGD", True, "epsilon", _pgd)
CW = Attack("CW-L2", True, "constant", _carlini_wagner)
DEEPFOOL = Attack("DeepFool", True, None, _deepfool)
SQUARE = Attack("Square", False, "epsilon", _square)
HOP_SKIP_JUMP = Attack("HopSkipJump", False, None, _hop_skip_jump)

WHITE_BOX = (FGSM, PGD, CW, DEEPFOOL)
BLACK_BOX = (SQUARE, HOP_SKIP_JUMP)


def run_attack(attack: Any, images: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """The attack's adversarial images (float32, clipped to [0, 1]) for `images`, untargeted on `labels`."""
    import torch

    np.random.seed(seed)
    torch.manual_seed(seed)
    adversarial = attack.generate(x=images.astype(np.float32), y=labels)
    return np.clip(adversarial, 0.0, 1.0).astype(np.float32)
