"""Quick evaluation reports, each run once per session and shared by the tests that read them: the shipped
RSE/APuDAE bundle's, and that of a small bundle hardened at training time (Seiler), built here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from evaluation.__main__ import main
from tests.conftest import bundle_dir

Report = tuple[dict[str, Any], Path]


def quick_evaluation(bundle: Path, out: Path) -> dict[str, Any]:
    """`python -m evaluation --quick` on `bundle`, uncached, leaving torch's thread count as it was."""
    threads = torch.get_num_threads()
    try:
        return main(["--quick", "--bundle", str(bundle), "--out", str(out), "--no-cache"])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Report:
    out = tmp_path_factory.mktemp("report")
    return quick_evaluation(bundle_dir(), out), out


@pytest.fixture(scope="session")
def plain_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Seiler-hardened MNIST bundle from the real recipe, trained briefly (2 epochs on 512 digits): an
    ordinary deterministic classifier, which is all the harness needs to know about such bundles."""
    from export import mnist_defenses

    repository = tmp_path_factory.mktemp("model_repository")
    threads = torch.get_num_threads()
    try:
        mnist_defenses.main(
            ["--defense", "seiler", "--out", str(repository), "--epochs", "2", "--train-images", "512"]
        )
    finally:
        torch.set_num_threads(threads)
    return bundle_dir(repository, "mnist-seiler")


@pytest.fixture(scope="session")
def plain(plain_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Report:
    out = tmp_path_factory.mktemp("plain-report")
    return quick_evaluation(plain_bundle, out), out


def row(results: dict[str, Any], threat: str, attack: str, system: str) -> dict[str, Any]:
    """The one non-variant row of (threat, attack, system) at the quick preset's single budget."""
    (found,) = [
        r
        for r in results["cells"]
        if (r["threat"], r["attack"], r["system"], r["variant"]) == (threat, attack, system, "")
    ]
    return found
