"""Where reports go and what a run without curves plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.report import plot_curves, report_folder
from tests.conftest import bundle_dir


def test_a_run_without_curves_writes_no_plot_and_says_so(tmp_path: Path) -> None:
    assert plot_curves(tmp_path / "none.png", {"transfer": {"RSE only": []}, "adaptive": {}}) is False
    assert not (tmp_path / "none.png").exists()
    curves = {"transfer": {"RSE only": [(0.0, 0.9), (0.1, 0.5)]}, "adaptive": {}}
    assert plot_curves(tmp_path / "one.png", curves) is True
    assert (tmp_path / "one.png").stat().st_size > 0


def _version(report: dict) -> str:
    return report["summary"]["bundle"]["version"]


def test_another_versions_report_is_not_overwritten(tmp_path: Path) -> None:
    """The default folder serves the version whose report it holds (or an empty one); another version
    is refused, naming the folder to pass, and an explicit --out is taken as given."""
    bundle = bundle_dir()
    name, version = bundle.parent.name, bundle.name
    folder = tmp_path / name
    assert report_folder(bundle, None, "results.json", _version, reports=tmp_path) == folder
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"summary": {"bundle": {"version": version}}}))
    assert report_folder(bundle, None, "results.json", _version, reports=tmp_path) == folder
    (folder / "results.json").write_text(json.dumps({"summary": {"bundle": {"version": "7"}}}))
    with pytest.raises(SystemExit, match=f"version 7; pass --out for version {version}"):
        report_folder(bundle, None, "results.json", _version, reports=tmp_path)
    assert report_folder(bundle, tmp_path / "mine", "results.json", _version, reports=tmp_path) == (
        tmp_path / "mine"
    )
