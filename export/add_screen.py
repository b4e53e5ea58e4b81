"""Add the adaptive-compute `screen` graph to an existing bundle that has a purifier, without retraining.

    python -m export.add_screen model_repository/mnist-rse-apudae/1

The screen is cut from the bundle's own `purifier.onnx` (see `extract_screen`), so the other graphs and every
recorded figure stay as they were; the manifest gains the graph entry with its hash.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from export.bundle import graph_entry, update_bundle
from export.onnx_export import SCREEN_INPUTS, SCREEN_OUTPUTS, extract_screen
from service.manifest import GraphFile, Manifest, load_manifest

SCREEN_FILENAME = "screen.onnx"


def write_screen(bundle_dir: Path, purifier_file: str) -> GraphFile:
    """Cut `screen.onnx` out of the bundle's purifier graph; returns its manifest entry."""
    extract_screen(bundle_dir / purifier_file, bundle_dir / SCREEN_FILENAME)
    return graph_entry(bundle_dir, SCREEN_FILENAME, SCREEN_INPUTS, SCREEN_OUTPUTS)


def add_screen(bundle_dir: Path) -> Manifest:
    manifest = load_manifest(bundle_dir, verify=True)
    if "purifier" not in manifest.graphs:
        raise SystemExit(f"{bundle_dir}: no purifier graph to cut a screen from")
    graphs = {**manifest.graphs, "screen": write_screen(bundle_dir, manifest.graphs["purifier"].path)}
    return update_bundle(bundle_dir, manifest, graphs=graphs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle", type=Path, help="bundle folder <repository>/<name>/<version>")
    manifest = add_screen(parser.parse_args(argv).bundle)
    print(f"{manifest.name}/{manifest.version}: screen {manifest.graphs['screen'].sha256}")


if __name__ == "__main__":
    main()
