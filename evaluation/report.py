"""reports/<bundle>/: results.json (every figure with its settings), report.md (the tables), and the plots
(accuracy against ε per system and threat model; ROC curves of the flag's scores)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # NOTE: files only; no display on servers or in CI
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

from service.manifest import load_manifest

THREAT_TITLES = {
    "transfer": "transfer / gray-box (crafted on the undefended classifier)",
    "known-weights": "gray-box with known weights (crafted on the bundle's own classifier with its noise off; "
    "the RSE noise and the purifier unknown: APuDAE's gray-box setting)",
    "surrogates": "transfer from surrogates (MI-FGSM on an ensemble of two other architectures)",
    "adaptive": "adaptive white-box (on each system's torch twin; EoT over RSE noise, BPDA through a purifier)",
    "blackbox": "black-box through the HTTP API",
}
THREAT_ATTACKS = {
    "transfer": "PGD",
    "known-weights": "PGD",
    "surrogates": "MI-FGSM",
    "adaptive": "PGD",
    "blackbox": "Square",
}
"""The L∞ attack each threat model's accuracy-against-ε curve follows."""


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _strength(row: dict[str, Any]) -> str:
    if row["strength"] is None:
        return "min-norm"
    return f"{'ε' if row['strength_name'] == 'epsilon' else 'c'} = {row['strength']:g}"


def _entry(row: dict[str, Any]) -> str:
    """Accuracy, with what else the reader needs to weigh it: the size of a minimum-norm attack's
    perturbation, the queries of a black-box one."""
    notes = []
    if row["strength_name"] != "epsilon":
        notes.append(f"L2 {row['mean_l2']:.2f}, L∞ {row['mean_linf']:.2f}")
    if "queries_per_image" in row:
        notes.append(f"{row['queries_per_image']:.0f} queries/image")
    return _pct(row["accuracy"]) + (f" ({'; '.join(notes)})" if notes else "")


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


def markdown(results: dict[str, Any]) -> str:
    summary, rows = results["summary"], results["cells"]
    systems = list(summary["clean"])
    labels = {name: system["label"] for name, system in summary["systems"].items()}
    lines = [
        f"# Robustness of `{summary['bundle']['name']}` v{summary['bundle']['version']}",
        "",
        f"{summary['dataset']}, {summary['test_images']} held-out test images at most; ensemble N = "
        f"{summary['samples']}; preset `{summary['config']['preset']}`. Command: `{results['command']}` "
        f"({results['machine']['description']}, {results['seconds'] / 60:.1f} min).",
        "",
        "## Clean",
        "",
        "| system | accuracy | flag rate |",
        "| --- | --- | --- |",
        *[
            f"| {labels[s]} | {_pct(c['accuracy'])} | {_pct(c['flag_rate'])} |"
            for s, c in summary["clean"].items()
        ],
    ]
    for threat, title in THREAT_TITLES.items():
        cells = [r for r in rows if r["threat"] == threat and not r["variant"]]
        if not cells:
            continue
        present = [s for s in systems if any(r["system"] == s for r in cells)]
        lines += [
            "",
            f"## {title}: accuracy",
            "",
            "| attack | strength | images | " + " | ".join(labels[s] for s in present) + " |",
            "| --- " * (len(present) + 3) + "|",
        ]
        keys = sorted({(r["attack"], _strength(r), r["images"]) for r in cells})
        for attack, strength, images in keys:
            by_system = {
                r["system"]: r
                for r in cells
                if (r["attack"], _strength(r), r["images"]) == (attack, strength, images)
            }
            entries = [_entry(by_system[s]) if s in by_system else "—" for s in present]
            lines.append(f"| {attack} | {strength} | {images} | " + " | ".join(entries) + " |")
        flagged = [r for r in cells if "auc" in r]
        if flagged:
            lines += [
                "",
                f"### {title}: the flag",
                "",
                "| attack | strength | system | flag rate (TPR) | clean flag rate (FPR) | defended or flagged | AUC per score | AUC combined flag |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for r in flagged:
                per_score = ", ".join(
                    f"{k} {v:.3f}" for k, v in r["auc"].items() if k != "combined_flag" and v is not None
                )
                lines.append(
                    f"| {r['attack']} | {_strength(r)} | {labels[r['system']]} | {_pct(r['flag_rate'])} | "
                    f"{_pct(r['clean_flag_rate'])} | {_pct(r['defended_or_flagged'])} | {per_score} | "
                    f"{r['auc']['combined_flag']:.3f} |"
                )
    if results["worst_case"]:
        lines += [
            "",
            "## Worst case over the attacks of each threat model",
            "",
            "| threat model | ε | system | accuracy | images | attacks |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for w in results["worst_case"]:
            lines.append(
                f"| {w['threat']} | {w['epsilon']:g} | {labels[w['system']]} | {_pct(w['accuracy'])} | "
                f"{w['images']} | {', '.join(w['attacks'])} |"
            )
    variants = [r for r in rows if r["variant"]]
    if variants:
        lines += [
            "",
            "## Extra runs: the flag-aware attack and the sanity checks' variants",
            "",
            "| run | system | ε | images | accuracy | flag rate | defended or flagged |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in variants:
            lines.append(
                f"| {r['variant']} | {labels[r['system']]} | {r['strength']:g} | {r['images']} | "
                f"{_pct(r['accuracy'])} | {_pct(r.get('flag_rate'))} | {_pct(r.get('defended_or_flagged'))} |"
            )
    lines += [
        "",
        "## Sanity checks",
        "",
        "| check | subject | result | detail |",
        "| --- | --- | --- | --- |",
    ]
    for c in results["checks"]:
        lines.append(
            f"| {c['check']} | {c['subject']} | {'pass' if c['passed'] else '**SUSPECT**'} | {c['detail']} |"
        )
    parity = summary["twin_parity"]
    lines += [
        "",
        "Twin parity (torch twin against the ONNX graphs, noise pinned): "
        + ", ".join(f"{k} {v:.3g}" for k, v in parity.items()),
        "",
    ]
    return "\n".join(lines)


Curve = list[tuple[float, float]]


def accuracy_curve(
    rows: list[dict[str, Any]], threat: str, system: str, clean: float, budgets: tuple[float, ...]
) -> Curve:
    """(ε, accuracy) of `system` under the threat model's L∞ attack at each budget, from the clean accuracy
    at ε = 0; empty when that attack did not run on it."""
    points = sorted(
        (r["strength"], r["accuracy"])
        for r in rows
        if r["threat"] == threat
        and r["attack"] == THREAT_ATTACKS[threat]
        and r["system"] == system
        and not r["variant"]
        and r["strength"] in budgets
    )
    return [(0.0, clean), *points] if points else []


def plot_accuracy(path: Path, results: dict[str, Any], budgets: tuple[float, ...]) -> bool:
    """Accuracy against ε of one run, one line per system; whether there was a curve to draw."""
    summary = results["summary"]
    return plot_curves(
        path,
        {
            threat: {
                summary["systems"][system]["label"]: accuracy_curve(
                    results["cells"], threat, system, clean["accuracy"], budgets
                )
                for system, clean in summary["clean"].items()
            }
            for threat in THREAT_TITLES
        },
    )


def plot_curves(path: Path, curves: dict[str, dict[str, Curve]]) -> bool:
    """Accuracy against ε, one panel per threat model (those with a curve), one line per labelled curve.

    Writes nothing and returns False when no threat model has a curve: a run of other attacks than those
    the curves follow (`--attacks BIM`) must still end with its report, not a plotting error.
    """
    threats = [t for t, lines in curves.items() if any(lines.values())]
    if not threats:
        return False
    # NOTE: one colour per label across the panels, also where a system is missing from one (black-box).
    labels = dict.fromkeys(label for lines in curves.values() for label in lines)
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    figure, axes = plt.subplots(1, len(threats), figsize=(5.2 * len(threats), 4.2), squeeze=False)
    for axis, threat in zip(axes[0], threats, strict=True):
        for label, points in curves[threat].items():
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, [100 * y for y in ys], marker="o", label=label, color=colours[label])
        axis.set_title(f"{threat}: {THREAT_ATTACKS[threat]}-L∞", fontsize=10)
        axis.set_xlabel("ε (L∞, pixels in [0, 1])")
        axis.set_ylabel("accuracy (%)")
        axis.set_ylim(-2, 102)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def plot_roc(
    path: Path,
    title: str,
    clean: dict[str, np.ndarray],
    attacked: dict[str, np.ndarray],
    operating_point: tuple[float, float],
) -> None:
    """ROC curve of each flag score (clean negatives, attacked positives) and the combined flag's point."""
    figure, axis = plt.subplots(figsize=(4.8, 4.4))
    truth = np.concatenate(
        [np.zeros(len(next(iter(clean.values())))), np.ones(len(next(iter(attacked.values()))))]
    )
    for name in sorted(clean):
        fpr, tpr, _ = roc_curve(truth, np.concatenate([clean[name], attacked[name]]))
        axis.plot(fpr, tpr, label=name)
    axis.plot(*operating_point, "k*", markersize=12, label="combined flag (calibrated)")
    axis.plot([0, 1], [0, 1], ":", color="grey")
    axis.set_xlabel("false-positive rate (clean)")
    axis.set_ylabel("true-positive rate (attacked)")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report_folder(
    bundle: Path,
    out: Path | None,
    written: str,
    version_of: Callable[[dict[str, Any]], str],
    reports: Path = Path("reports"),
) -> Path:
    """Where a report goes: `out`, or reports/<bundle name>/ unless its `written` file (read by
    `version_of`) is the report of another version of the bundle.

    Every version of a bundle has the same name, and a run on version 2 once overwrote version 1's report;
    callers check before any attack runs, so that a long run is not lost to the refusal.
    """
    if out is not None:
        return out
    manifest = load_manifest(bundle, verify=False)
    folder = reports / manifest.name
    previous = folder / written
    if previous.is_file():
        version = version_of(json.loads(previous.read_text()))
        if version != manifest.version:
            raise SystemExit(
                f"{previous} is the report of {manifest.name} version {version}; pass --out for version "
                f"{manifest.version} (e.g. --out {folder}/v{manifest.version})"
            )
    return folder


def probe_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every probe of one bundle takes (`evaluation.purifier_probe`, `.noise_control`, `.served_accuracy`)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="data folder, for bundles not on MNIST")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="default reports/<bundle name>/")
    return parser


def probe_main(
    description: str,
    stem: str,
    measure: Callable[[Path, Path | None, int], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
    argv: list[str] | None,
) -> None:
    """The whole command line of a probe that takes just `probe_parser`'s arguments."""
    args = probe_parser(description).parse_args(argv)
    run_probe(args, stem, lambda a: measure(a.bundle, a.data, a.images), markdown)


def run_probe(
    args: argparse.Namespace,
    stem: str,
    measure: Callable[[argparse.Namespace], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
) -> None:
    """Measure, then write `<stem>.json` and `<stem>.md` where `report_folder` says (checked first, so a
    long probe is not lost to a refusal) and print the Markdown."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = report_folder(args.bundle, args.out, f"{stem}.json", lambda result: result["bundle"].split("/")[1])
    result = measure(args)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
