"""One table and one plot across the evaluation reports of several bundles: every defense against every
attack, threat model and budget, on the same test images.

    python -m evaluation.compare reports/mnist-rse-apudae reports/mnist-amc reports/mnist-deep-defense \\
        reports/mnist-seiler --out reports/mnist-comparison

Reads each report's results.json and writes comparison.md, comparison.json and comparison.png. Each report
contributes its bundle's systems; the undefended classifier, which every report of one dataset shares, is
taken once (from the first report). Reports whose footing differs (data, split, test images, budgets, preset,
image counts, seed, undefended classifier) are refused: their figures are not about the same images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from evaluation.config import THREATS
from evaluation.report import THREAT_TITLES, accuracy_curve, plot_curves, write_json
from evaluation.runner import FLAG_AWARE
from evaluation.systems import UNDEFENDED
from export.bundle import invoking_command

RowKey = tuple[str, str, str, str | None, float | None]
"""(threat, attack, variant, strength name, strength): one line of the comparison."""


class IncomparableReports(ValueError):
    """The reports were not run on the same footing; comparing them would mislead."""


def load_report(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    if not path.is_file():
        raise IncomparableReports(f"{folder}: no results.json (run `python -m evaluation` first)")
    results = json.loads(path.read_text())
    if "footing" not in results["summary"]:
        raise IncomparableReports(f"{path} predates the comparison (no footing recorded): run it again")
    return results


def check_footing(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The footing all reports share; raises, naming every difference, when they do not share one."""
    footings = {name: results["summary"]["footing"] for name, results in reports.items()}
    first = next(iter(footings.values()))
    keys = sorted(set().union(*footings.values()))
    differences = [
        f"{key}: " + ", ".join(f"{name} {footing.get(key)!r}" for name, footing in footings.items())
        for key in keys
        if any(footing.get(key) != first.get(key) for footing in footings.values())
    ]
    if differences:
        raise IncomparableReports(
            "the reports were not run on the same test images and budgets:\n  " + "\n  ".join(differences)
        )
    return first


def defenses(reports: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Comparison name -> (bundle, system) for every system of every report, the undefended one once; a
    name two bundles share gets the bundle's name appended."""
    columns: dict[str, tuple[str, str]] = {}
    for bundle, results in reports.items():
        for system, described in results["summary"]["systems"].items():
            if system == UNDEFENDED and any(s == UNDEFENDED for _, s in columns.values()):
                continue
            name = described["defense"]
            columns[name if name not in columns else f"{name} ({bundle})"] = (bundle, system)
    return columns


def _row_key(row: dict[str, Any]) -> RowKey:
    return row["threat"], row["attack"], row["variant"], row["strength_name"], row["strength"]


def _order(key: RowKey) -> tuple[int, str, str, float]:
    threat, attack, variant, _, strength = key
    return THREATS.index(threat), attack, variant, -1.0 if strength is None else strength


def comparison(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Everything the table and the plot show, as data (comparison.json)."""
    footing = check_footing(reports)
    columns = defenses(reports)
    cells: dict[RowKey, dict[str, Any]] = {}
    for name, (bundle, system) in columns.items():
        for row in reports[bundle]["cells"]:
            if row["system"] != system or row["variant"] not in ("", FLAG_AWARE):
                continue
            entry = cells.setdefault(_row_key(row), {"images": row["images"], "results": {}})
            entry["results"][name] = {
                "accuracy": row["accuracy"],
                "defended_or_flagged": row.get("defended_or_flagged"),
                "mean_l2": row["mean_l2"],
            }
    return {
        "reports": [
            {"bundle": bundle, "version": r["summary"]["bundle"]["version"], "command": r["command"]}
            for bundle, r in reports.items()
        ],
        "footing": footing,
        "defenses": {name: {"bundle": b, "system": s} for name, (b, s) in columns.items()},
        "clean": {name: reports[b]["summary"]["clean"][s] for name, (b, s) in columns.items()},
        "rows": [
            {
                "threat": key[0],
                "attack": key[1],
                "variant": key[2],
                "strength_name": key[3],
                "strength": key[4],
                **cells[key],
            }
            for key in sorted(cells, key=_order)
        ],
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _entry(result: dict[str, Any] | None, minimum_norm: bool) -> str:
    if result is None:
        return "—"
    text = _pct(result["accuracy"])
    if result["defended_or_flagged"] is not None:
        text += f" / {_pct(result['defended_or_flagged'])}"
    return text + (f" (L2 {result['mean_l2']:.2f})" if minimum_norm else "")


def markdown(data: dict[str, Any], command: str) -> str:
    names = list(data["defenses"])
    footing = data["footing"]
    lines = [
        "# Defenses compared",
        "",
        f"{footing['dataset']}; the same {footing['test_images']} test images at most (split seed "
        f"{footing['split']['seed']}), L∞ budgets {', '.join(f'{b:g}' for b in footing['budgets'])}, preset "
        f"`{footing['preset']}`. Bundles: "
        + ", ".join(f"`{r['bundle']}` v{r['version']}" for r in data["reports"])
        + f". Command: `{command}`.",
        "",
        "Each entry: accuracy / defended-or-flagged (the attack failed: right answer, or the input flagged); "
        "one figure for a system without a flag. C&W and the minimum-norm attacks are unbounded: their mean "
        "L2 perturbation is given. Threat models: "
        + "; ".join(f"**{threat}**: {title}" for threat, title in THREAT_TITLES.items())
        + ".",
        "",
        "| threat model | attack | strength | images | " + " | ".join(names) + " |",
        "| --- " * (len(names) + 4) + "|",
        f"| clean | — | — | {footing['test_images']} | "
        + " | ".join(_pct(data["clean"][n]["accuracy"]) for n in names)
        + " |",
        f"| clean flag rate | — | — | {footing['test_images']} | "
        + " | ".join(_pct(data["clean"][n]["flag_rate"]) for n in names)
        + " |",
    ]
    for row in data["rows"]:
        attack = row["attack"] + (f" ({row['variant']})" if row["variant"] else "")
        if row["strength"] is None:
            strength = "min-norm"
        else:
            strength = f"{'ε' if row['strength_name'] == 'epsilon' else 'c'} = {row['strength']:g}"
        bounded = row["strength_name"] == "epsilon"
        entries = [_entry(row["results"].get(n), not bounded) for n in names]
        lines.append(
            f"| {row['threat']} | {attack} | {strength} | {row['images']} | " + " | ".join(entries) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(path: Path, reports: dict[str, dict[str, Any]], data: dict[str, Any]) -> None:
    """Accuracy against ε, one panel per threat model, one line per defense."""
    budgets = tuple(data["footing"]["budgets"])
    curves = {
        threat: {
            name: accuracy_curve(
                reports[where["bundle"]]["cells"],
                threat,
                where["system"],
                data["clean"][name]["accuracy"],
                budgets,
            )
            for name, where in data["defenses"].items()
        }
        for threat in THREAT_TITLES
    }
    plot_curves(path, curves)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("reports", nargs="+", type=Path, help="report folders, each with a results.json")
    parser.add_argument("--out", type=Path, required=True, help="folder for comparison.md, .json and .png")
    args = parser.parse_args(argv)
    try:
        loaded = [load_report(folder) for folder in args.reports]
        reports = {results["summary"]["bundle"]["name"]: results for results in loaded}
        if len(reports) < len(loaded):
            raise IncomparableReports("two reports are of the same bundle")
        data = comparison(reports)
    except IncomparableReports as error:
        parser.error(str(error))
    command = invoking_command()
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "comparison.json", {"command": command, **data})
    (args.out / "comparison.md").write_text(markdown(data, command))
    plot(args.out / "comparison.png", reports, data)
    return data


if __name__ == "__main__":
    main()
