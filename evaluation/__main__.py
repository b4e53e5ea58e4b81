"""Robustness and detection evaluation of a bundle with real attacks (ART) under five threat models (`config.THREATS`).

    python -m evaluation --bundle model_repository/mnist-rse-apudae/1            (standard preset)
    python -m evaluation --bundle model_repository/mnist-rse-apudae/1 --quick    (a minute, for CI)

Writes reports/<bundle name>/ (or --out): results.json, report.md, accuracy_vs_eps.png, roc_*.png.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evaluation.attacks import ALL
from evaluation.checks import as_dicts, run_checks, worst_case
from evaluation.config import PRESETS, THREATS, preset
from evaluation.report import markdown, plot_accuracy, plot_roc, report_folder, write_json
from evaluation.runner import Evaluation
from export.bundle import invoking_command

log = logging.getLogger("evaluation")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=Path("model_repository/mnist-rse-apudae/1"))
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report folder (default reports/<bundle name>, unless it holds another version's report)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="standard")
    parser.add_argument("--quick", action="store_const", const="quick", dest="preset", help="--preset quick")
    parser.add_argument("--threats", default=",".join(THREATS), help=f"comma-separated subset of {THREATS}")
    parser.add_argument("--attacks", help=f"comma-separated subset of {','.join(a.name for a in ALL)}")
    parser.add_argument("--transfer-images", type=int)
    parser.add_argument("--adaptive-images", type=int)
    parser.add_argument("--blackbox-images", type=int)
    parser.add_argument("--samples", type=int, help="ensemble size N (default: the bundle's)")
    parser.add_argument("--eot", type=int, dest="eot_samples", help="k, RSE noise draws per gradient")
    parser.add_argument("--pgd-steps", type=int)
    parser.add_argument("--purifier-gradient", choices=("bpda", "exact"))
    parser.add_argument("--no-sanity", action="store_false", dest="sanity", default=None)
    parser.add_argument("--sanity-images", type=int, help="images of the sanity checks' extra attacks")
    parser.add_argument(
        "--surrogate-epochs", type=int, help="epochs of the undefended classifier and the transfer surrogates"
    )
    parser.add_argument("--service-url", help="attack this running service instead of starting one")
    parser.add_argument("--data", type=Path, help="data folder for bundles whose data is not packaged")
    parser.add_argument("--cache", type=Path, default=Path("runs/eval"), help="cached cells and surrogate")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where torch works: the undefended classifier's training and the white-box attacks (the replays "
        "through the bundle's graphs stay on onnxruntime's CPU provider)",
    )
    parser.add_argument("--machine", default=None, help="how the report names this machine")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and onnxruntime threads (1: on a busy 2-core machine two threads per library fight and "
        "run 3x slower; raise it on a quiet many-core machine)",
    )
    return parser.parse_args(argv)


def machine_description(label: str | None) -> dict[str, str]:
    import art
    import onnxruntime
    import torch

    return {
        "description": label or f"{os.cpu_count()}-core {platform.machine()} CPU, no GPU",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "onnxruntime": onnxruntime.__version__,
        "art": art.__version__,
    }


def roc_plots(evaluation: Evaluation, out: Path) -> list[str]:
    written = []
    system = evaluation.product
    top = max(evaluation.budgets)
    clean = evaluation.clean[system]
    for result in evaluation.results:
        cell = result.cell
        if (
            cell.attack.name != "PGD"
            or cell.strength != top
            or cell.variant
            or system not in result.per_image
        ):
            continue
        arrays, n = result.per_image[system], cell.images
        attacked = {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("score:")}
        clean_scores = {k: v[:n] for k, v in clean.scores.items() if k in attacked}
        point = (float(clean.flagged[:n].mean()), float(arrays["flagged"].mean()))
        name = f"roc_{cell.threat}_pgd_{top:g}.png"
        plot_roc(
            out / name, f"{system}: {cell.threat} PGD ε={top:g}, {n} images", clean_scores, attacked, point
        )
        written.append(name)
    return written


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    config = preset(
        args.preset,
        threats=tuple(t for t in args.threats.split(",") if t),
        attacks=tuple(args.attacks.split(",")) if args.attacks else None,
        transfer_images=args.transfer_images,
        adaptive_images=args.adaptive_images,
        blackbox_images=args.blackbox_images,
        samples=args.samples,
        eot_samples=args.eot_samples,
        pgd_steps=args.pgd_steps,
        purifier_gradient=args.purifier_gradient,
        sanity=args.sanity,
        sanity_images=args.sanity_images,
        surrogate_epochs=args.surrogate_epochs,
    )
    unknown = set(config.threats) - set(THREATS)
    if unknown:
        raise SystemExit(f"unknown threat models {sorted(unknown)}; choose from {THREATS}")
    names = [attack.name for attack in ALL]
    if config.attacks and set(config.attacks) - set(names):
        raise SystemExit(f"unknown attacks {sorted(set(config.attacks) - set(names))}; choose from {names}")
    out = report_folder(
        args.bundle, args.out, "results.json", lambda report: report["summary"]["bundle"]["version"]
    )
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device cuda: torch {torch.__version__} sees no CUDA device; use --device cpu")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    evaluation = Evaluation(
        args.bundle,
        config,
        cache_dir=None if args.no_cache else args.cache / args.bundle.parent.name,
        service_url=args.service_url,
        data_dir=args.data,
        threads=args.threads,
        device=args.device,
    )
    evaluation.run()
    budgets = evaluation.budgets
    checks = run_checks(evaluation.results, budgets)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "command": invoking_command(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine_description(args.machine),
        "summary": evaluation.summary(),
        "cells": [row for result in evaluation.results for row in result.rows],
        "worst_case": worst_case(evaluation.results, budgets),
        "checks": as_dicts(checks),
    }
    accuracy_plot = (
        ["accuracy_vs_eps.png"] if plot_accuracy(out / "accuracy_vs_eps.png", results, budgets) else []
    )
    results["plots"] = [*accuracy_plot, *roc_plots(evaluation, out)]
    write_json(out / "results.json", results)
    (out / "report.md").write_text(markdown(results))
    suspect = [c for c in checks if not c.passed]
    log.info(
        "wrote %s in %.1f min: %d cells, %d checks, %d suspect",
        out,
        results["seconds"] / 60,
        len(results["cells"]),
        len(checks),
        len(suspect),
    )
    return results


if __name__ == "__main__":
    main()
