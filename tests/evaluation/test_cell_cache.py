"""Finished cells are cached per bundle version, keyed on the graphs the harness judges: a graph it never
runs (the opt-in float16 ensemble) added to a bundle later must not throw away hours of finished cells, and
a changed graph it does run must."""

from __future__ import annotations

from pathlib import Path

from evaluation.runner import EVALUATED_GRAPHS, cells_folder
from service.manifest import FP16_ENSEMBLE, load_manifest
from tests.conftest import bundle_dir


def test_cells_are_keyed_on_the_graphs_the_harness_runs(tmp_path: Path) -> None:
    manifest = load_manifest(bundle_dir())
    assert FP16_ENSEMBLE in manifest.graphs
    folder = cells_folder(tmp_path, manifest)
    without_fp16 = {role: graph for role, graph in manifest.graphs.items() if role != FP16_ENSEMBLE}
    assert cells_folder(tmp_path, manifest.model_copy(update={"graphs": without_fp16})) == folder

    for role in EVALUATED_GRAPHS:
        changed = manifest.graphs[role].model_copy(update={"sha256": "0" * 64})
        other = manifest.model_copy(update={"graphs": {**manifest.graphs, role: changed}})
        assert cells_folder(tmp_path, other) != folder, role
    assert folder.parent == tmp_path / "cells"
