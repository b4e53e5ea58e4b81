"""The accuracy plot of a run that has no curve to draw (only attacks the curves do not follow)."""

from __future__ import annotations

from pathlib import Path

from evaluation.report import plot_curves


def test_a_run_without_curves_writes_no_plot_and_says_so(tmp_path: Path) -> None:
    assert plot_curves(tmp_path / "none.png", {"transfer": {"RSE only": []}, "adaptive": {}}) is False
    assert not (tmp_path / "none.png").exists()
    curves = {"transfer": {"RSE only": [(0.0, 0.9), (0.1, 0.5)]}, "adaptive": {}}
    assert plot_curves(tmp_path / "one.png", curves) is True
    assert (tmp_path / "one.png").stat().st_size > 0
