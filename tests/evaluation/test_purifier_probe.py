"""The purifier probe on the shipped MNIST bundle: real PGD, the shipped DAE and briefly fine-tuned copies."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from evaluation.purifier_probe import main, parse_args, run
from service.manifest import load_manifest
from tests.conftest import bundle_dir

SHIPPED, TUNED = "shipped DAE", "the DAE trained 1 more epochs on blind noise"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by the tests, so that the undefended classifier is trained once."""
    return tmp_path_factory.mktemp("cache")


def _run(cache: Path, *extra: str) -> dict:
    threads = torch.get_num_threads()
    args = ["--bundle", str(bundle_dir()), "--images", "60", "--epsilon", "0.15", "--surrogate-epochs", "2"]
    try:
        return run(parse_args([*args, "--finetune-epochs", "1", "--cache", str(cache), *extra]))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def probe(cache: Path) -> dict:
    return _run(cache)


def test_mu_and_sigma_are_measured_as_the_recipe_measured_them(probe) -> None:
    spec = load_manifest(bundle_dir()).purifier
    shipped = probe["daes"][SHIPPED]
    assert math.isclose(shipped["mu"], spec.mu, rel_tol=1e-4)
    assert math.isclose(shipped["sigma"], spec.sigma, rel_tol=1e-4)
    assert not math.isclose(probe["daes"][TUNED]["mu"], spec.mu, rel_tol=1e-3)


def test_the_attack_is_real_and_the_mnist_purifier_undoes_and_notices_it(probe) -> None:
    undefended = "undefended classifier"
    accuracy = probe["daes"][SHIPPED]["accuracy"]
    assert accuracy["clean, as is"][undefended] > 0.8
    assert accuracy["transfer PGD, as is"][undefended] < 0.5
    assert accuracy["transfer PGD, purified"][undefended] > accuracy["transfer PGD, as is"][undefended] + 0.3
    assert probe["daes"][SHIPPED]["error_auc"]["transfer PGD"] > 0.9
    errors = probe["daes"][SHIPPED]["mean_error"]
    assert errors["transfer PGD"] > errors["clean"]


def test_known_weights_examples_are_crafted_on_the_bundles_own_classifier(probe) -> None:
    accuracy = probe["daes"][SHIPPED]["accuracy"]
    rse = next(name for name in probe["classifiers"] if name.startswith("RSE"))
    # crafted on the very weights the ensemble runs: they fool it more than those of another network
    assert accuracy["known-weights PGD, as is"][rse] < accuracy["transfer PGD, as is"][rse]
    assert accuracy["known-weights PGD, as is"][rse] < accuracy["clean, as is"][rse] - 0.3
    assert set(probe["daes"][SHIPPED]["error_auc"]) == {"transfer PGD", "known-weights PGD"}


def test_the_adversarial_finetune_trains_on_pgd_examples_of_the_classifier(cache: Path, probe) -> None:
    # NOTE: after `probe` (a parameter for that), so the undefended classifier comes from the shared cache.
    result = _run(cache, "--finetune-on", "adversarial", "--finetune-images", "200")
    (name,) = [name for name in result["daes"] if name != SHIPPED]
    assert "of 200 training images and their PGD examples (known-weights PGD)" in name
    tuned = result["daes"][name]
    assert tuned["mu"] != result["daes"][SHIPPED]["mu"]
    # the shipped DAE, probed in both runs on the same examples, gives the same figures
    assert result["daes"][SHIPPED]["mean_error"] == probe["daes"][SHIPPED]["mean_error"]


def test_the_report_is_written_and_printed(probe, cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    # NOTE: after `probe` (a parameter for that), so the undefended classifier comes from the shared cache.
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        main(
            ["--bundle", str(bundle_dir()), "--images", "8", "--surrogate-epochs", "2", "--cache", str(cache)]
        )
    finally:
        torch.set_num_threads(threads)
    text = (tmp_path / "reports" / "mnist-rse-apudae" / "purifier_probe.md").read_text()
    assert text.startswith("# Purifier probe of `mnist-rse-apudae/1`")
    assert "## shipped DAE" in text and "ROC AUC of the error" in text
    for row in ("clean, as is", "transfer PGD, D(x)", "known-weights PGD, purified"):
        assert f"| {row} |" in text
    assert text in capsys.readouterr().out
