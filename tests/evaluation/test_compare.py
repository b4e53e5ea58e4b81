"""`python -m evaluation.compare` on two quick reports (the shipped RSE/APuDAE bundle and a Seiler bundle):
one table over every defense, and a refusal when the reports do not share their test images and budgets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evaluation.compare import main
from tests.evaluation.conftest import row


def test_one_table_over_every_defense(quick, plain, tmp_path: Path) -> None:
    (rse, rse_out), (seiler, seiler_out) = quick, plain
    data = main([str(rse_out), str(seiler_out), "--out", str(tmp_path)])
    assert list(data["defenses"]) == ["undefended", "RSE", "APuDAE", "RSE+APuDAE", "Seiler"]
    assert data["defenses"]["undefended"] == {"bundle": "mnist-rse-apudae", "system": "undefended"}
    by_key = {(r["threat"], r["attack"], r["variant"]): r["results"] for r in data["rows"]}
    assert {threat for threat, _, _ in by_key} == {
        "transfer",
        "known-weights",
        "surrogates",
        "adaptive",
        "blackbox",
    }
    # a plain bundle hides nothing from its weights, so it has no known-weights cells
    assert set(by_key["known-weights", "PGD", ""]) == {"undefended", "RSE", "APuDAE", "RSE+APuDAE"}
    transfer = by_key["transfer", "PGD", ""]
    assert transfer["Seiler"]["accuracy"] == row(seiler, "transfer", "PGD", "seiler")["accuracy"]
    assert transfer["RSE+APuDAE"]["accuracy"] == row(rse, "transfer", "PGD", "purifier+rse")["accuracy"]
    assert transfer["undefended"]["defended_or_flagged"] is None
    assert set(by_key["surrogates", "MI-FGSM", ""]) == set(data["defenses"])
    assert set(by_key["blackbox", "Square", ""]) == {"RSE", "RSE+APuDAE", "Seiler"}
    table = (tmp_path / "comparison.md").read_text()
    assert (
        "| threat model | attack | strength | images | undefended | RSE | APuDAE | RSE+APuDAE | Seiler |"
        in table
    )
    assert json.loads((tmp_path / "comparison.json").read_text())["rows"] == data["rows"]
    assert (tmp_path / "comparison.png").read_bytes().startswith(b"\x89PNG")


def test_reports_on_other_images_or_budgets_are_refused(quick, plain, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    shutil.copytree(plain[1], other)
    results = json.loads((other / "results.json").read_text())
    results["summary"]["footing"] |= {"budgets": [0.1, 0.2, 0.3], "preset": "standard"}
    (other / "results.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit):
        main([str(quick[1]), str(other), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert "not run on the same test images" in error and "budgets" in error and "preset" in error
    assert not (tmp_path / "out").exists()
