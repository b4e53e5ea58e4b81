"""The sanity checks and the worst-case table, on hand-made per-image results: a check must fire when the
evidence says the attack is broken, and stay quiet within noise."""

from __future__ import annotations

import numpy as np

from evaluation import attacks as A
from evaluation.checks import run_checks, worst_case
from evaluation.config import PRESETS
from evaluation.metrics import auc, cell_figures
from evaluation.runner import Cell, CellResult
from evaluation.systems import Outcome

CONFIG = PRESETS["quick"]


def _result(threat, attack, strength, correct, *, variant="", source="purifier+rse", linf=None) -> CellResult:
    correct = np.asarray(correct, dtype=bool)
    system = "purifier+rse"
    cell = Cell(threat, attack, strength, source, (system,), len(correct), CONFIG, variant)
    linf = (
        np.full(len(correct), strength if strength is not None else 0.5) if linf is None else np.asarray(linf)
    )
    per_image = {system: {"correct": correct, "flagged": np.zeros(len(correct), bool), "linf": linf}}
    return CellResult(cell, [], per_image)


def _names(checks, passed):
    return {c.check for c in checks if c.passed is passed}


def test_pgd_weaker_than_fgsm_is_suspect_and_equal_is_not() -> None:
    fgsm = _result("adaptive", A.FGSM, 0.3, [0] * 80 + [1] * 20)
    weak_pgd = _result("adaptive", A.PGD, 0.3, [0] * 40 + [1] * 60)
    assert "iterative ≥ single-step (PGD vs FGSM)" in _names(run_checks([fgsm, weak_pgd], (0.3,)), False)
    fine_pgd = _result("adaptive", A.PGD, 0.3, [0] * 79 + [1] * 21)
    assert "iterative ≥ single-step (PGD vs FGSM)" in _names(run_checks([fgsm, fine_pgd], (0.3,)), True)


def test_large_epsilon_steps_eot_and_black_box_checks() -> None:
    base = _result("adaptive", A.PGD, 0.3, [0, 1] * 50)
    results = [
        base,
        _result("adaptive", A.PGD, 0.6, [0] * 30 + [1] * 20, variant="large ε"),
        _result("adaptive", A.PGD, 0.3, [0] * 10 + [1] * 40, variant="2x steps"),
        _result("adaptive", A.PGD, 0.3, [0, 1] * 25, variant="2x EoT"),
        _result("blackbox", A.SQUARE, 0.3, [0] * 5 + [1] * 15, source="http:purifier+rse"),
    ]
    checks = run_checks(results, (0.3,))
    failed, passed = _names(checks, False), _names(checks, True)
    assert "accuracy falls to ~0 at a large ε" in failed
    assert "more steps do not raise accuracy" in failed
    assert "more EoT samples do not raise accuracy" in passed
    assert "white-box ≥ black-box" in passed


def test_minimum_norm_black_box_counts_only_examples_within_the_budget() -> None:
    white = _result("adaptive", A.PGD, 0.1, [1] * 20)
    # HopSkipJump fooled everything, but only with perturbations far above ε = 0.1
    hsj = _result("blackbox", A.HOP_SKIP_JUMP, None, [0] * 20, source="http:purifier+rse", linf=[0.5] * 20)
    (check,) = [c for c in run_checks([white, hsj], (0.1,)) if c.check == "white-box ≥ black-box"]
    assert check.passed
    (row,) = [r for r in worst_case([white, hsj], (0.1,)) if r["threat"] == "blackbox"]
    assert row["accuracy"] == 1.0


def test_worst_case_takes_the_per_image_minimum() -> None:
    fgsm = _result("transfer", A.FGSM, 0.3, [1, 1, 0, 1], source="undefended")
    pgd = _result("transfer", A.PGD, 0.3, [1, 0, 1, 1], source="undefended")
    (row,) = worst_case([fgsm, pgd], (0.3,))
    assert row["accuracy"] == 0.5 and row["attacks"] == ["FGSM", "PGD"]


def test_cell_figures() -> None:
    labels = np.array([0, 1, 2, 3])
    clean = Outcome(np.array([0, 1, 2, 0]), {"z": np.array([0.0, 0.1, 0.2, 0.3])}, np.zeros(4, bool))
    attacked = Outcome(
        np.array([0, 2, 2, 3]), {"z": np.array([1.0, 2.0, 3.0, 0.05])}, np.array([0, 1, 0, 0], bool)
    )
    figures = cell_figures(labels, clean, attacked)
    assert figures["accuracy"] == 0.75
    assert figures["attack_success_rate"] == 1 / 3  # of the 3 clean-correct images, image 1 was turned
    assert figures["defended_or_flagged"] == 1.0
    assert figures["auc"]["z"] == 0.8125
    assert auc(np.zeros(3), np.zeros(3)) == 0.5
