"""Write a bundle directory: graphs already in place, plus a manifest that pins their hashes."""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.manifest import MANIFEST_FILENAME, GraphFile, Manifest, load_manifest, sha256_file


def graph_entry(bundle_dir: Path, filename: str, inputs: list[str], outputs: list[str]) -> GraphFile:
    return GraphFile(path=filename, sha256=sha256_file(bundle_dir / filename), inputs=inputs, outputs=outputs)


def invoking_command() -> str:
    """The command line that is running, as a user would retype it (`python -m export.x ...`)."""
    module = sys.modules["__main__"].__spec__
    name = module.name.removesuffix(".__main__") if module is not None else None
    head = ["python", "-m", name] if name is not None else ["python", sys.argv[0]]
    return shlex.join(head + sys.argv[1:])


def run_recipe(build: Callable[[Any], Manifest], args: Any) -> Manifest:
    """A recipe's `main`: INFO logs without the exporters' chatter, build the bundle, say what was written."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    manifest = build(args)
    logging.getLogger("export").info(
        "wrote %s/%s: accuracy %.4f", manifest.name, manifest.version, manifest.metrics.clean_accuracy
    )
    return manifest


def update_bundle(bundle_dir: Path, manifest: Manifest, **changes: Any) -> Manifest:
    """Rewrite an existing bundle's manifest with `changes` (top-level fields, validated as a whole), and
    read it back with hash verification: for tools that add a derived graph without retraining."""
    updated = Manifest.model_validate({**manifest.model_dump(), **changes})
    (bundle_dir / MANIFEST_FILENAME).write_text(updated.to_json())
    return load_manifest(bundle_dir, verify=True)


def write_bundle(bundle_dir: Path, **fields: Any) -> Manifest:
    """Validate the manifest fields, write `manifest.json`, and read it back with hash verification."""
    manifest = Manifest(**fields)
    (bundle_dir / MANIFEST_FILENAME).write_text(manifest.to_json())
    return load_manifest(bundle_dir, verify=True)
