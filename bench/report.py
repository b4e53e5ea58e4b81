"""results.json -> results.md (tables, ratios, targets met or not) and throughput.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def targets(results: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """(target, measured, required, met) for each of the issue's targets that this run measured. The engine's
    lead over the naive way must be 10x on a GPU (the naive baseline runs there too) and 2x on CPU; the other
    targets are the CPU ones, reported for a GPU run as measured."""
    engine, http = results["engine"], results.get("http")
    rows = []
    if "32" in engine["fixed_T"]:
        ratio = engine["fixed_T"]["32"] / results["naive"]["purify"]["best"]
        required = 10.0 if results.get("provider") == "cuda" else 2.0
        rows.append(
            ("engine at batch 32 / naive, full pipeline (purify + N)", ratio, required, ratio >= required)
        )
    at = {run["users"]: run for run in http["batching_on"]} if http else {}
    off = {run["users"]: run for run in http["batching_off"]} if http else {}
    if 16 in at:
        # the batcher's max batch (DEFENDED_MAX_BATCH_IMAGES) where the run measured it, else the largest
        max_batch = str(results.get("batcher_max_batch"))
        if max_batch not in engine["adaptive"]:
            max_batch = max(engine["adaptive"], key=int)
        share = at[16]["requests_per_second"] / engine["adaptive"][max_batch]
        rows.append((f"HTTP, 16 clients / engine at batch {max_batch}", share, 0.8, share >= 0.8))
        ratio = at[16]["requests_per_second"] / off[16]["requests_per_second"]
        rows.append(("HTTP, 16 clients: batching on / off", ratio, 2.0, ratio >= 2.0))
    if http:
        half = http["half_load"]
        spread = half["p99_ms"] / half["p50_ms"]
        rows.append(("p99 / p50 latency at half the saturation throughput", spread, 2.5, spread <= 2.5))
    largest = max(engine["adaptive"], key=int)
    speedup = engine["adaptive"][largest] / engine["fixed_T"][largest]
    rows.append(
        (f"adaptive / fixed-T throughput on clean images, batch {largest}", speedup, 3.0, speedup >= 3.0)
    )
    trade = results["adaptive_trade"]

    def largest_change(mode: str) -> float:
        # NOTE: rounded to a millionth of a point: one image in 200 is 0.5 points exactly, not the
        # 0.5000000001 that float subtraction gives.
        return round(
            max(
                abs(trade[f"{data}_{mode}"][key] - trade[f"{data}_fixed_T"][key]) * 100
                for data in ("clean", "pgd")
                for key in ("accuracy", "flag_rate")
            ),
            6,
        )

    worst, floor = largest_change("adaptive"), largest_change("fixedT-repeat")
    rows.append(
        ("largest accuracy / flag-rate change from adaptive compute (points)", worst, 0.5, worst <= 0.5)
    )
    rows.append(("the same between two fixed-T runs: the noise floor (points)", floor, 0.5, floor <= 0.5))
    return rows


def device(results: dict[str, Any]) -> str:
    """The machine the engine ran on, in words: the GPU by name, else the CPU cores."""
    machine = results["machine"]
    return f"GPU {machine['gpu']}" if "gpu" in machine else f"{machine['cpu_cores']} CPU cores"


def naive_ratios(results: dict[str, Any]) -> list[tuple[str, float]]:
    """The engine over the naive baseline on the full pipeline (purify + N): at batch 32 and at its best."""
    naive = results["naive"]["purify"]["best"]
    fixed = results["engine"]["fixed_T"]
    best = max(fixed, key=lambda batch: fixed[batch])
    rows = [(f"best engine rate (batch {best}) / naive", fixed[best] / naive)]
    if "32" in fixed:
        rows.insert(0, ("engine at batch 32 / naive", fixed["32"] / naive))
    return rows


def write_report(results: dict[str, Any], out: Path) -> None:
    machine = results["machine"]
    lines = [
        f"# Benchmark: {results['bundle']}, N = {results['samples']}, on {device(results)}",
        "",
        f"Command: `{results['command']}` ({results['when']}). Machine: "
        + (f"GPU {machine['gpu']}, " if "gpu" in machine else "")
        + f"{machine['cpu_cores']} CPU cores, {machine['platform']}, onnxruntime {machine['onnxruntime']} "
        f"({', '.join(machine['providers'])}), torch {machine['torch']}; 1-minute load average "
        f"{machine['load_average_at_start'][0]:.2f} at the start and "
        f"{machine['load_average_at_end'][0]:.2f} at the end (other work on the machine "
        "inflates it and lowers every figure)."
        + (" **Quick mode: smoke figures, not for quoting.**" if results["quick"] else ""),
        "",
        "Full pipeline (purify + N), engine / naive: "
        + "; ".join(f"{name} **{ratio:.2f}**" for name, ratio in naive_ratios(results))
        + ".",
        "",
        "## Targets",
        "",
        "| target | measured | required | met |",
        "| --- | --- | --- | --- |",
    ]
    for name, value, required, met in targets(results):
        lines.append(f"| {name} | {value:.2f} | {required:g} | {'yes' if met else '**no**'} |")
    naive = results["naive"]
    lines += [
        "",
        "## Naive reference vs engine (images/s, clean test images)",
        "",
        "Naive: PyTorch eager, one image per call, N sequential noisy passes, purification with torch autograd "
        "and torch.optim.Adam (T steps, no noise), weights loaded from the bundle's ONNX graphs.",
        "",
        "| naive | " + " | ".join(key.replace("_", " ") for key in naive["purify"]) + " |",
        "| --- |" + " --- |" * len(naive["purify"]),
        *(
            f"| {label} | " + " | ".join(f"{v:.1f}" for v in naive[key].values()) + " |"
            for key, label in (("purify", "purify + N"), ("no_purify", "N only"))
        ),
        "",
        "| engine mode | " + " | ".join(f"batch {b}" for b in results["engine"]["fixed_T"]) + " |",
        "| --- |" + " --- |" * len(results["engine"]["fixed_T"]),
    ]
    for mode, by_batch in results["engine"].items():
        lines.append(f"| {mode} | " + " | ".join(f"{v:.1f}" for v in by_batch.values()) + " |")
    lines += _latency_lines(results)
    lines += [
        "",
        f"The engine runs as the service does: {results['engine_threads']['calls_side_by_side']} calls side by "
        f"side, {results['engine_threads']['threads_per_call']} onnxruntime thread(s) each. "
        "fixed_T purifies every image for T steps and runs the ensemble on purified and raw input (2·B·N rows); "
        "adaptive skips the steps for images whose reconstruction z-score is ≤ 0 (the service default); "
        "no_purify runs the ensemble alone; *_fp16: the same on the bundle's float16 ensemble graph "
        "(`DEFENDED_PRECISION=fp16`).",
    ]
    lines += _cuda_graph_lines(results) + _http_lines(results)
    flops, peak = results["flops_per_image"], results["matmul_flops_per_second"]
    best = max(results["engine"]["fixed_T"].values())
    achieved = best * flops["fixed_T_pipeline"]
    lines += [
        "",
        "## Machine limit",
        "",
        f"FLOPs per image (counted by torch): fixed-T pipeline {flops['fixed_T_pipeline'] / 1e6:.0f} M, "
        f"classifier pass {flops['classifier_pass'] / 1e6:.1f} M, purifier {flops['purifier'] / 1e6:.0f} M. "
        f"Best fixed-T engine throughput {best:.0f} images/s = {achieved / 1e9:.1f} GFLOP/s, against "
        f"{peak / 1e9:.1f} GFLOP/s for a large float32 matrix product on the same {_peak_device(results)} "
        f"({achieved / peak:.0%} of that float32 figure).",
        "",
        "## Adaptive compute: what it changes",
        "",
        "| data | mode | images | accuracy | flag rate | share purified |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, row in results["adaptive_trade"].items():
        data, mode = key.split("_", 1)
        lines.append(
            f"| {data} | {mode} | {row['images']} | {row['accuracy']:.3f} | {row['flag_rate']:.3f} | "
            f"{row['purified_share']:.3f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plot(results, out / "throughput.png")


def _peak_device(results: dict[str, Any]) -> str:
    """Where the matmul peak was measured, with the GPU's other precisions for context."""
    precisions = results.get("matmul_flops_per_second_by_precision")
    if precisions is None:
        return "machine"
    others = ", ".join(f"{name} {value / 1e12:.1f} TFLOP/s" for name, value in precisions.items())
    return f"GPU, TF32 off; by precision: {others}"


def _latency_lines(results: dict[str, Any]) -> list[str]:
    """Per-call latency percentiles of the engine, where the run recorded them."""
    latency = results.get("engine_latency_ms")
    if not latency:
        return []
    lines = [
        "",
        "Engine per-call latency, ms (p50 / p95 / p99 of one `infer` call over a batch):",
        "",
        "| engine mode | " + " | ".join(f"batch {b}" for b in results["engine"]["fixed_T"]) + " |",
        "| --- |" + " --- |" * len(results["engine"]["fixed_T"]),
    ]
    for mode, by_batch in latency.items():
        cells = (f"{ms['p50']:.1f} / {ms['p95']:.1f} / {ms['p99']:.1f}" for ms in by_batch.values())
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return lines


def _cuda_graph_lines(results: dict[str, Any]) -> list[str]:
    attempt = results.get("cuda_graph")
    if attempt is None:
        return []
    outcome = (
        f"{attempt['images_per_second']:.1f} images/s"
        if "error" not in attempt
        else f"refused: `{attempt['error'].splitlines()[0][:300]}`"
    )
    return [
        "",
        f"onnxruntime CUDA graphs (`enable_cuda_graph`) on the ensemble alone at batch {attempt['batch']}: "
        f"{outcome}.",
    ]


def _http_lines(results: dict[str, Any]) -> list[str]:
    http = results.get("http")
    if not http:
        return ["", "## Service over HTTP", "", "Not measured in this run (`--skip-http`)."]
    lines = [
        "",
        "## Service over HTTP (locust, single-image JSON requests, loopback)",
        "",
        "| configuration | users | req/s | p50 ms | p95 ms | p99 ms | failures |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label in ("batching_on", "batching_off", "batching_on_no_purify"):
        lines += [_http_row(label, run) for run in http[label]]
    lines.append(_http_row("half_load (batching on)", http["half_load"]))
    return lines


def _http_row(label: str, run: dict[str, Any]) -> str:
    return (
        f"| {label} | {run['users']} | {run['requests_per_second']:.1f} | {run['p50_ms']:.0f} | "
        f"{run['p95_ms']:.0f} | {run['p99_ms']:.0f} | {run['failures']} |"
    )


def _plot(results: dict[str, Any], path: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, by_batch in results["engine"].items():
        left.plot([int(b) for b in by_batch], list(by_batch.values()), marker="o", label=f"engine, {mode}")
    left.axhline(results["naive"]["purify"]["best"], color="grey", linestyle="--", label="naive, purify + N")
    left.set(xscale="log", xlabel="batch size (images)", ylabel="images/s", title="In-process engine")
    left.legend(fontsize=8)
    http = results.get("http")
    if not http:  # --skip-http
        right.set_axis_off()
    else:
        for label, runs in http.items():
            if label != "half_load":
                right.plot(
                    [r["users"] for r in runs],
                    [r["requests_per_second"] for r in runs],
                    marker="o",
                    label=label,
                )
        right.set(
            xscale="log",
            xlabel="concurrent clients",
            ylabel="requests/s (1 image each)",
            title="HTTP service",
        )
        right.legend(fontsize=8)
    figure.suptitle(f"{results['bundle']}, N = {results['samples']}, {device(results)}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
