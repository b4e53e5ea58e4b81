"""The served-accuracy measurement: the real served pipeline on real test images, MNIST and CIFAR-10."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.served_accuracy import main, wilson
from service.manifest import load_manifest
from tests.conftest import SHIPPED_REPOSITORY, bundle_dir
from tests.models.test_data import SHARED_CIFAR_TEST


def _measure(tmp_path: Path, *argv: str) -> tuple[dict, str]:
    main([*argv, "--out", str(tmp_path)])
    return json.loads((tmp_path / "served_accuracy.json").read_text()), (
        tmp_path / "served_accuracy.md"
    ).read_text()


def test_the_wilson_interval_brackets_the_share_and_stays_in_range() -> None:
    low, high = wilson(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.2775, abs=1e-3)
    low, high = wilson(10, 10)
    assert low == pytest.approx(0.7225, abs=1e-3) and high == pytest.approx(1.0)
    low, high = wilson(881, 1000)
    assert low < 0.881 < high and high - low == pytest.approx(0.040, abs=2e-3)


def test_mnist_bundle_is_measured_on_its_own_test_split(tmp_path: Path) -> None:
    result, table = _measure(tmp_path, "--bundle", str(bundle_dir()), "--images", "60")
    manifest = load_manifest(bundle_dir())
    assert result["bundle"] == f"{manifest.name}/{manifest.version}" and result["images"] == 60
    assert result["test_set"] == "the bundle's own test split"
    for system in ("served", "rse_only"):
        row = result[system]
        assert row["correct"] == round(row["accuracy"] * 60) and row["accuracy"] >= 0.9
        assert row["ci95"][0] <= row["accuracy"] <= row["ci95"][1]
    assert set(result["per_class"]) == set(manifest.classes)
    assert 0 <= result["flag_rate"] <= 0.25
    assert f"{result['served']['correct']}/60" in table


@pytest.mark.skipif(
    not SHARED_CIFAR_TEST.is_file(), reason=f"{SHARED_CIFAR_TEST} absent (only on dev/CI machines)"
)
def test_cifar10_bundle_is_measured_on_the_whole_test_set(tmp_path: Path) -> None:
    bundle = SHIPPED_REPOSITORY / "cifar10-rse-hgd" / "8"
    data = str(SHARED_CIFAR_TEST.parent)
    result, _ = _measure(tmp_path, "--bundle", str(bundle), "--data", data, "--images", "40")
    assert result["images"] == 40 and result["test_set"] == "the dataset's whole test set"
    assert result["manifest_test_images"] == 2000
    # a stratified sample: the zip stores the 10,000 class after class
    assert set(result["per_class"]) == set(load_manifest(bundle).classes)
    assert result["served"]["accuracy"] >= 0.6
