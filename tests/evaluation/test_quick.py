"""`python -m evaluation --quick` on the shipped bundle, end to end: real ART attacks, the real graphs, the
real service over HTTP. Asserts only what a handful of images can show honestly."""

from __future__ import annotations

import json

from evaluation.runner import PARITY_LIMITS
from tests.evaluation.conftest import row


def test_undefended_falls_and_the_defense_holds_on_gray_box_pgd(quick) -> None:
    results, _ = quick
    undefended = row(results, "transfer", "PGD", "undefended")
    defended = row(results, "transfer", "PGD", "purifier+rse")
    assert undefended["strength"] == 0.3 and undefended["images"] >= 40
    assert undefended["accuracy"] < 0.10
    assert defended["accuracy"] > undefended["accuracy"]


def test_the_seeds_gray_box_bim_runs_where_the_defense_is_unknown_with_its_settings(quick) -> None:
    results, _ = quick
    bim = [r for r in results["cells"] if r["attack"] == "BIM"]
    assert {r["threat"] for r in bim} == {"transfer", "known-weights"}
    assert {r["system"] for r in bim} == {"undefended", "rse", "purifier", "purifier+rse"}
    assert all(r["params"]["steps"] == 7 and r["params"]["step_size"] == "ε / 4" for r in bim)
    undefended = row(results, "transfer", "BIM", "undefended")
    assert undefended["accuracy"] < undefended["clean_accuracy"] - 0.5


def test_known_weights_examples_come_from_the_bundles_own_classifier(quick) -> None:
    results, _ = quick
    cells = [r for r in results["cells"] if r["threat"] == "known-weights"]
    assert {r["source"] for r in cells} == {"known-weights"}
    assert {r["system"] for r in cells} == set(results["summary"]["clean"])
    rse = row(results, "known-weights", "PGD", "rse")
    assert rse["mean_linf"] <= 0.3 + 1e-6
    # crafted on the very weights the ensemble runs: the noise alone does not undo most of it
    assert rse["accuracy"] < rse["clean_accuracy"] - 0.2
    assert "white-box ≥ gray-box with known weights" in {c["check"] for c in results["checks"]}


def test_the_flag_separates_gray_box_pgd_from_clean(quick) -> None:
    auc = row(quick[0], "transfer", "PGD", "purifier+rse")["auc"]
    assert auc["combined_flag"] > 0.5
    assert auc["reconstruction"] > 0.5


def test_the_twin_matched_the_graphs(quick) -> None:
    parity = quick[0]["summary"]["twin_parity"]
    for name, limit in PARITY_LIMITS.items():
        assert parity[name] <= limit


def test_every_threat_model_ran_and_black_box_counted_queries(quick) -> None:
    results, _ = quick
    assert {r["threat"] for r in results["cells"]} == {
        "transfer",
        "known-weights",
        "surrogates",
        "adaptive",
        "blackbox",
    }
    assert {r["system"] for r in results["cells"]} == {"undefended", "rse", "purifier", "purifier+rse"}
    surrogates = [r for r in results["cells"] if r["threat"] == "surrogates"]
    assert {r["system"] for r in surrogates} == set(results["summary"]["clean"])
    assert all(r["attack"] == "MI-FGSM" and r["params"]["decay"] == 1.0 for r in surrogates)
    black = [r for r in results["cells"] if r["threat"] == "blackbox"]
    assert {r["attack"] for r in black} == {"Square", "HopSkipJump"}
    assert all(r["queries"] > 0 and r["requests"] > 0 for r in black)
    adaptive = row(results, "adaptive", "PGD", "purifier+rse")
    assert adaptive["params"]["eot_samples"] == 2 and adaptive["params"]["purifier_gradient"] == "bpda"
    flag_aware = [r for r in results["cells"] if r["variant"] == "flag-aware"]
    assert {r["system"] for r in flag_aware} == {"purifier", "purifier+rse"}
    assert all(0.0 <= r["defended_or_flagged"] <= 1.0 and r["images"] == 8 for r in flag_aware)


def test_sanity_checks_ran_and_the_report_was_written(quick) -> None:
    results, out = quick
    names = {c["check"] for c in results["checks"]}
    assert {
        "accuracy falls to ~0 at a large ε",
        "iterative ≥ single-step (PGD vs FGSM)",
        "white-box ≥ black-box",
    } <= names
    assert all(isinstance(c["passed"], bool) for c in results["checks"])
    assert json.loads((out / "results.json").read_text())["cells"] == results["cells"]
    report = (out / "report.md").read_text()
    assert "## Sanity checks" in report and "black-box through the HTTP API" in report
    for plot in results["plots"]:
        assert (out / plot).read_bytes().startswith(b"\x89PNG")
    assert "roc_transfer_pgd_0.3.png" in results["plots"]
