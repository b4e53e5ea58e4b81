"""The noise control on the shipped MNIST bundle: real corruptions through the real served pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.noise_control import jpeg, main
from service.manifest import load_manifest
from tests.conftest import SHIPPED_REPOSITORY, bundle_dir


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("control")
    main(["--bundle", str(bundle_dir()), "--images", "40", "--out", str(out)])
    return json.loads((out / "noise_control.json").read_text()), (out / "noise_control.md").read_text()


def test_every_corruption_is_measured_with_every_score(control) -> None:
    result, table = control
    thresholds = load_manifest(bundle_dir()).calibration.thresholds
    rows = result["rows"]
    assert next(iter(rows)) == "clean" and {"JPEG quality 75", "Gaussian σ 0.03"} <= set(rows)
    assert [name for name in rows if name.startswith("random sign")] == [
        f"random sign, L∞ {e:.4g}" for e in (0.1, 0.2, 0.3)
    ]
    assert all(set(row["fired"]) == set(thresholds) for row in rows.values())
    assert all(name in table for name in rows)
    # the clean row is the calibrated operating point: accurate, and rarely flagged
    assert rows["clean"]["mean_abs_change"] == 0 and rows["clean"]["served_accuracy"] >= 0.9
    assert rows["clean"]["flag_rate"] <= 0.2


def test_the_corruptions_have_the_sizes_they_are_named_for(control) -> None:
    rows = control[0]["rows"]
    # a random sign moves every pixel by ε, less where [0, 1] clips it (most MNIST pixels sit at 0)
    for epsilon in (0.1, 0.2, 0.3):
        change = rows[f"random sign, L∞ {epsilon:.4g}"]["mean_abs_change"]
        assert 0.4 * epsilon < change <= epsilon
    assert rows["Gaussian σ 0.01"]["mean_abs_change"] < rows["Gaussian σ 0.03"]["mean_abs_change"] < 0.03
    assert rows["JPEG quality 75"]["mean_abs_change"] > 0


def test_jpeg_round_trips_grey_and_colour_images() -> None:
    rng = np.random.default_rng(0)
    for channels in (1, 3):
        images = rng.random((2, channels, 16, 16), dtype=np.float32)
        decoded = jpeg(images, 75)
        assert decoded.shape == images.shape and decoded.dtype == np.float32
        assert 0 < np.abs(decoded - images).mean() < 0.3
    smooth = np.full((1, 3, 16, 16), 0.5, dtype=np.float32)
    assert np.abs(jpeg(smooth, 95) - smooth).max() < 0.02


def test_a_bundle_without_purifier_is_refused(tmp_path: Path) -> None:
    plain = sorted((SHIPPED_REPOSITORY / "mnist-amc").glob("*"))[0]
    with pytest.raises(SystemExit, match="no purifier"):
        main(["--bundle", str(plain), "--out", str(tmp_path)])
