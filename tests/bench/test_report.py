"""The bench report: targets read from a run's results, and the files written from them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from bench.report import targets, write_report

REPO = Path(__file__).resolve().parents[2]
CIFAR10_RUN = REPO / "reports" / "bench" / "cifar10" / "results.json"
GPU_RUN = REPO / "reports" / "bench" / "cifar10-h100" / "results.json"


def _met(results: dict, name: str) -> bool:
    return next(met for target, _, _, met in targets(results) if target.startswith(name))


def test_one_image_in_200_is_half_a_point_and_meets_the_limit() -> None:
    results = json.loads(CIFAR10_RUN.read_text())
    trade = results["adaptive_trade"]
    for data in ("clean", "pgd"):
        for mode in ("fixed_T", "fixedT-repeat", "adaptive"):
            trade[f"{data}_{mode}"] |= {"accuracy": 0.3, "flag_rate": 0.1}
    changed = copy.deepcopy(results)
    changed["adaptive_trade"]["pgd_adaptive"]["accuracy"] = 0.3 - 1 / 200  # 0.29500000000000004
    assert _met(changed, "largest accuracy / flag-rate change")
    changed["adaptive_trade"]["pgd_adaptive"]["accuracy"] = 0.3 - 2 / 200
    assert not _met(changed, "largest accuracy / flag-rate change")


def test_report_of_a_real_run_has_its_tables_and_plot(tmp_path: Path) -> None:
    write_report(json.loads(CIFAR10_RUN.read_text()), tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "| engine at batch 32 / naive, full pipeline (purify + N) | 3.11 | 2 | yes |" in text
    assert "half_load (batching on)" in text
    assert (tmp_path / "throughput.png").stat().st_size > 10_000


def test_report_of_the_h100_run_names_the_gpu_its_10x_target_and_the_float32_peak(tmp_path: Path) -> None:
    results = json.loads(GPU_RUN.read_text())
    write_report(results, tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "on GPU NVIDIA H100 80GB HBM3" in text
    assert "| engine at batch 32 / naive, full pipeline (purify + N) | 149.32 | 10 | yes |" in text
    assert "best engine rate (batch 512) / naive **487.78**" in text
    assert "of that float32 figure" in text and "tf32 404.6 TFLOP/s" in text
    assert "refused: `Fail: [ONNXRuntimeError]" in text
    del results["http"]  # a run with --skip-http
    write_report(results, tmp_path)
    assert "`--skip-http`" in (tmp_path / "results.md").read_text()
