"""Sanity checks from the adaptive-attack literature (Carlini et al. 2019, "On Evaluating Adversarial
Robustness"; Tramèr et al. 2020, "On Adaptive Attacks to Adversarial Example Defenses").

A failed check does not stop the run and is never hidden: it is logged as SUSPECT, written into
results.json and the Markdown report, and it means the attack (not the defense) is to be doubted first.
Comparisons allow two standard errors of noise (at least 2 points), computed on the images both cells share.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from evaluation.config import THREATS
from evaluation.metrics import standard_error_gap
from evaluation.runner import CellResult

log = logging.getLogger(__name__)
LARGE_EPSILON_CEILING = 0.10


@dataclass(frozen=True)
class Check:
    check: str
    subject: str
    passed: bool
    detail: str


def _robust(result: CellResult, system: str, epsilon: float | None = None) -> np.ndarray:
    """Per image: the attack failed, or (with `epsilon`) its example lies outside the L∞ ball of that size."""
    arrays = result.per_image[system]
    if epsilon is None:
        return arrays["correct"]
    return arrays["correct"] | (arrays["linf"] > epsilon + 1e-6)


def _accuracy(result: CellResult, system: str, n: int, epsilon: float | None = None) -> float:
    return float(_robust(result, system, epsilon)[:n].mean())


def _find(results: list[CellResult], **match: Any) -> Iterator[CellResult]:
    for result in results:
        cell = result.cell
        fields = {
            "threat": cell.threat,
            "attack": cell.attack.name,
            "strength": cell.strength,
            "source": cell.source,
            "variant": cell.variant,
        }
        if all(fields[k] == v for k, v in match.items()):
            yield result


def _no_weaker(
    name: str,
    subject: str,
    strong: tuple[CellResult, str],
    weak: tuple[CellResult, str],
    epsilon: float | None = None,
) -> Check:
    """The attack that should be stronger leaves no more accuracy than the weaker one, within noise."""
    n = min(strong[0].cell.images, weak[0].cell.images)
    a_strong, a_weak = _accuracy(*strong, n), _accuracy(*weak, n, epsilon)
    gap = standard_error_gap(a_strong, a_weak, n, n)
    return Check(
        name,
        subject,
        a_strong <= a_weak + gap,
        f"{a_strong:.1%} vs {a_weak:.1%} on {n} images (allowed excess {gap:.1%})",
    )


def run_checks(results: list[CellResult], budgets: tuple[float, ...]) -> list[Check]:
    checks: list[Check] = []
    for result in _find(results, variant="large ε"):
        (system,) = result.cell.systems
        accuracy = _accuracy(result, system, result.cell.images)
        checks.append(
            Check(
                "accuracy falls to ~0 at a large ε",
                f"{system}, adaptive PGD ε={result.cell.strength:g}",
                accuracy <= LARGE_EPSILON_CEILING,
                f"accuracy {accuracy:.1%} (ceiling {LARGE_EPSILON_CEILING:.0%}) on {result.cell.images} images",
            )
        )
    for pgd in _find(results, attack="PGD", variant=""):
        if pgd.cell.threat == "blackbox":
            continue
        for fgsm in _find(
            results, attack="FGSM", threat=pgd.cell.threat, strength=pgd.cell.strength, source=pgd.cell.source
        ):
            for system in pgd.cell.systems:
                subject = f"{system}, {pgd.cell.threat}, ε={pgd.cell.strength:g}"
                checks.append(
                    _no_weaker(
                        "iterative ≥ single-step (PGD vs FGSM)", subject, (pgd, system), (fgsm, system)
                    )
                )
    # NOTE: a transfer attack from other architectures, or from the weights without the defense, knows less
    # than the adaptive attack: white-box must beat it.
    for threat, name, how in (
        ("blackbox", "white-box ≥ black-box", "over HTTP"),
        ("surrogates", "white-box ≥ transfer from surrogates", "on the surrogates"),
        ("known-weights", "white-box ≥ gray-box with known weights", "on the noise-free weights"),
    ):
        for other in _find(results, threat=threat):
            # NOTE: a minimum-norm attack (HopSkipJump) is compared at every budget, counting its larger
            # examples as failures there.
            epsilons = list(budgets) if other.cell.strength is None else [other.cell.strength]
            for system in other.cell.systems:
                for epsilon in epsilons:
                    for white in _find(
                        results, threat="adaptive", attack="PGD", strength=epsilon, source=system, variant=""
                    ):
                        subject = f"{system}, ε={epsilon:g}: adaptive PGD vs {other.cell.attack.name} {how}"
                        checks.append(_no_weaker(name, subject, (white, system), (other, system), epsilon))
    for variant in ("2x steps", "2x EoT"):
        for more in _find(results, variant=variant):
            (system,) = more.cell.systems
            for base in _find(
                results,
                threat="adaptive",
                attack="PGD",
                strength=more.cell.strength,
                source=system,
                variant="",
            ):
                subject = f"{system}, adaptive PGD ε={more.cell.strength:g}"
                name = f"more {'steps' if 'steps' in variant else 'EoT samples'} do not raise accuracy"
                checks.append(_no_weaker(name, subject, (more, system), (base, system)))
    for check in checks:
        if not check.passed:
            log.warning("SUSPECT: %s (%s): %s", check.check, check.subject, check.detail)
    return checks


def as_dicts(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(check) for check in checks]


def worst_case(results: list[CellResult], budgets: tuple[float, ...]) -> list[dict[str, Any]]:
    """Per threat model, system and ε: the share of images that survive every attack of that threat model
    at that ε (an L∞ attack run at ε; any other attack whose example lies within ε in L∞), on the images all
    of them share."""
    rows = []
    for threat in THREATS:
        for epsilon in budgets:
            survivors: dict[str, list[np.ndarray]] = {}
            names: dict[str, list[str]] = {}
            for result in results:
                cell = result.cell
                if cell.threat != threat or cell.variant:
                    continue
                if cell.attack.strength == "epsilon" and cell.strength != epsilon:
                    continue
                for system in result.per_image:
                    survivors.setdefault(system, []).append(_robust(result, system, epsilon))
                    names.setdefault(system, []).append(cell.attack.name)
            for system, arrays in survivors.items():
                n = min(len(a) for a in arrays)
                robust = np.logical_and.reduce([a[:n] for a in arrays])
                rows.append(
                    {
                        "threat": threat,
                        "system": system,
                        "epsilon": epsilon,
                        "accuracy": float(robust.mean()),
                        "images": n,
                        "attacks": sorted(set(names[system])),
                    }
                )
    return rows
