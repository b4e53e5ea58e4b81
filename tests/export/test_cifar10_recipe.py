"""The CIFAR-10 recipe end to end on a few synthetic JPEGs (never the real data): one short epoch of each
training, a served bundle out, checkpoints written, and the evaluation harness's twin matching its graphs;
for both classifier architectures, the VGG-style one trained under bfloat16 autocast."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.guided_gap import TEST, TRAINING, markdown, measure
from evaluation.recipes import CIFAR10
from evaluation.twin import check_parity, load_twin
from export.cifar10_rse import guided_training_images, main, warm_start
from models.data import CIFAR10_CLASSES
from service.manifest import load_manifest
from service.pipeline import run_pipeline
from service.runtime import EnsembleEngine, PurifierEngine
from tests.conftest import bundle_dir

CPU = ["CPUExecutionProvider"]


def _write_zip(path: Path, per_class: int, rng: np.random.Generator) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for index, name in enumerate(CIFAR10_CLASSES):
            for k in range(per_class):
                # a class-dependent colour plus noise: learnable, and enough spread for the DAE statistics
                base = np.array([index * 25, 255 - index * 25, (index * 70) % 256], dtype=np.float64)
                pixels = np.clip(base + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="JPEG", quality=75)
                archive.writestr(f"{name}/{k:04d}.jpg", buffer.getvalue())


# fmt: off
ARCHITECTURES = {
    "rse-resnet": ["--widths", "8,16", "--blocks", "1", "--dae-blind-noise"],
    "rse-vgg": [
        "--architecture", "rse-vgg", "--plan", "8,M,16,M,M,M,M", "--bf16",
        "--dae-guided-epochs", "1", "--dae-guided-images", "12", "--purify-steps", "0",
    ],
}
# fmt: on


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    _write_zip(root / "cifar10-jpeg-train.zip", 6, rng)
    _write_zip(root / "cifar10-jpeg-test.zip", 2, rng)
    main([*_small_run(root, request.param), "--checkpoints", str(root / "ckpt")])
    return root, root / "repo" / "cifar10-rse-apudae" / "1"


def _small_run(root: Path, architecture: str) -> list[str]:
    # fmt: off
    return [
        "--data", str(root), "--out", str(root / "repo"),
        "--epochs", "1", "--dae-epochs", "1", "--batch-size", "16", "--dae-depth", "4", "--dae-width", "8",
        "--calibration", "20", "--samples", "2", "--device", "cpu", "--test-images", "10",
        *ARCHITECTURES[architecture],
    ]
    # fmt: on


def test_the_recipe_writes_a_bundle_the_service_runs(bundle) -> None:
    root, path = bundle
    manifest = load_manifest(path, verify=True)
    assert manifest.data.dataset == "CIFAR-10 (JPEG)"
    assert (manifest.data.train, manifest.data.calibration, manifest.data.test) == (40, 20, 10)
    assert manifest.input.shape == (3, 32, 32) and manifest.classes == CIFAR10_CLASSES
    assert 0 <= manifest.training["test_accuracy_without_noise"] <= 1
    assert manifest.purifier is not None
    if manifest.training["architecture"] == "rse-resnet":
        assert manifest.training["dae_noise"] == "blind" and manifest.training["widths"] == "8,16"
        assert not manifest.purifier.reform and "dae_guided_epochs" not in manifest.training
    else:
        assert manifest.training["bf16"] is True and manifest.training["conv_plan"] == "8,M,16,M,M,M,M"
        # the guided DAE: its reconstruction is served, and its training is on record
        assert manifest.purifier.reform and manifest.training["dae_guided_images"] == 12
        assert manifest.purifier.steps == 0
        assert (root / "ckpt" / "dae-guided.pt").is_file()
        assert (root / "ckpt" / "dae-guided-examples-12-s0.npy").is_file(), "kept for a resumed run"
    assert (root / "ckpt" / "classifier.pt").is_file() and (root / "ckpt" / "dae.pt").is_file()
    ensemble = EnsembleEngine(path / "ensemble.onnx", providers=CPU)
    purifier = PurifierEngine(path / "purifier.onnx", providers=CPU)
    images = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    result = run_pipeline(ensemble, purifier, manifest.purifier, images, 4, purify=True)
    assert result.summary.mean_probabilities.shape == (3, 10)
    assert set(result.scores) >= {"reconstruction", "disagreement", "purification_changed_label"}


def test_the_evaluation_twin_matches_the_cifar_graphs(bundle) -> None:
    root, path = bundle
    twin = load_twin(path, CIFAR10)
    split = CIFAR10.split(twin.manifest, root)
    assert len(split.test) == 10  # the stratified test subset the recipe measured on
    parity = check_parity(twin, split.test.images[:8])
    assert parity["ensemble_max_abs_diff"] < 1e-4
    assert parity["purifier_mean_abs_diff"] < 1e-4


def test_a_warm_started_run_continues_from_the_earlier_weights(bundle) -> None:
    root, path = bundle
    architecture = load_manifest(path).training["architecture"]
    warm, version = root / "warm", "2"
    if architecture == "rse-vgg":  # its run trained a guided denoiser, which must be guided further
        unguided = ["--warm-start", str(root / "ckpt"), "--dae-guided-epochs", "0"]
        with pytest.raises(ValueError, match="--dae-guided-epochs"):
            main([*_small_run(root, architecture), *unguided])
    # a learning rate of ~0: what the continued classifier holds is what it started from
    main([*_small_run(root, architecture), "--checkpoints", str(warm), "--warm-start", str(root / "ckpt"),
          "--lr", "1e-12", "--version", version])  # fmt: skip
    training = load_manifest(root / "repo" / "cifar10-rse-apudae" / version).training
    assert training["warm_start_from"] == str(root / "ckpt" / "classifier.pt")
    # the evaluation's undefended model is trained from scratch like the earlier run, not at the continuation's rate
    assert training["warm_start_lr"] == 3e-3 and CIFAR10.surrogate(load_manifest(path)).lr == 3e-3
    assert CIFAR10.surrogate(load_manifest(root / "repo" / "cifar10-rse-apudae" / version)).lr == 3e-3
    earlier, continued = (
        torch.load(folder / "classifier.pt", weights_only=True)["model"] for folder in (root / "ckpt", warm)
    )
    for name, weights in earlier.items():
        if name.endswith("weight") and weights.dim() == 4:
            torch.testing.assert_close(continued[name], weights, atol=1e-6, rtol=0)
    # the denoiser is taken, not trained again: the guided one where the earlier run trained one
    source = "dae-guided.pt" if architecture == "rse-vgg" else "dae.pt"
    assert training["dae_warm_start_from"] == str(root / "ckpt" / source)
    if architecture == "rse-vgg":  # guided further: its own checkpoint, no plain one
        assert not (warm / "dae.pt").exists() and (warm / source).is_file()
    else:  # kept as it is, so copied: the folder is a whole run to warm-start from
        assert (warm / source).read_bytes() == (root / "ckpt" / source).read_bytes()


def test_an_unfinished_training_is_no_warm_start(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    torch.save({"model": model.state_dict(), "epoch": 3, "epochs": 20, "seconds": 1.0}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="after epoch 3 of 20"):
        warm_start(model, tmp_path / "c.pt")


def test_a_warm_start_with_no_epochs_keeps_the_classifier_and_anneals_the_guided_dae(bundle) -> None:
    """`--epochs 0`: only the guided DAE trains on, here with its rate annealed to 0 (`--dae-guided-cosine`);
    the served classifier is the earlier one, weight for weight."""
    root, path = bundle
    architecture = load_manifest(path).training["architecture"]
    if architecture != "rse-vgg":
        pytest.skip("only the VGG-style run trains a guided denoiser")
    run = [*_small_run(root, architecture), "--warm-start", str(root / "ckpt"), "--epochs", "0"]
    with pytest.raises(SystemExit):  # no classifier to keep without a warm start
        main([*_small_run(root, architecture), "--epochs", "0"])
    kept = root / "kept"
    main([*run, "--checkpoints", str(kept), "--dae-guided-cosine", "--version", "3"])
    manifest = load_manifest(root / "repo" / "cifar10-rse-apudae" / "3")
    assert manifest.training["epochs"] == 0 and manifest.training["dae_guided_lr_schedule"] == "cosine"
    # kept as it is, so copied beside the guided DAE: the folder is a whole run to warm-start from
    assert (kept / "classifier.pt").read_bytes() == (root / "ckpt" / "classifier.pt").read_bytes()
    # the evaluation's undefended model is trained like the earlier classifier
    assert CIFAR10.surrogate(manifest) == CIFAR10.surrogate(load_manifest(path))
    guided = torch.load(kept / "dae-guided.pt", weights_only=True)
    assert guided["optimizer"]["param_groups"][0]["lr"] < 1e-9, "annealed to 0 by its last step"
    earlier, served = (
        load_twin(folder, CIFAR10).classifier.state_dict()
        for folder in (path, root / "repo" / "cifar10-rse-apudae" / "3")
    )
    assert served.keys() == earlier.keys()
    for name, weights in served.items():
        torch.testing.assert_close(weights, earlier[name], atol=0, rtol=0)


def test_a_warm_start_that_trains_nothing_repackages_the_guided_run_with_mirrored_passes(bundle) -> None:
    """`--epochs 0 --dae-guided-epochs 0`: both trained parts kept, weight for weight, the guided DAE still
    served as a reformer; `--mirror-passes` flips every odd pass in the graph, which the twin matches."""
    root, path = bundle
    if load_manifest(path).training["architecture"] != "rse-vgg":
        pytest.skip("only the VGG-style run trains a guided denoiser")
    # fmt: off
    main([*_small_run(root, "rse-vgg"), "--warm-start", str(root / "ckpt"), "--epochs", "0",
          "--dae-guided-epochs", "0", "--mirror-passes", "--checkpoints", str(root / "kept-both"), "--version", "4"])
    # fmt: on
    repackaged = root / "repo" / "cifar10-rse-apudae" / "4"
    manifest = load_manifest(repackaged)
    assert manifest.rse.mirrored_passes and not load_manifest(path).rse.mirrored_passes
    assert manifest.purifier is not None and manifest.purifier.reform
    assert manifest.training["dae_warm_start_from"] == str(root / "ckpt" / "dae-guided.pt")
    assert "mirrored" in manifest.description
    for part in ("classifier.pt", "dae-guided.pt"):
        assert (root / "kept-both" / part).read_bytes() == (root / "ckpt" / part).read_bytes()
    earlier, kept = (load_twin(folder, CIFAR10) for folder in (path, repackaged))
    assert kept.purifier is not None and earlier.purifier is not None
    for part in ("classifier", "purifier"):
        ours, theirs = getattr(kept, part).state_dict(), getattr(earlier, part).state_dict()
        assert ours.keys() == theirs.keys()
        for name, weights in ours.items():
            torch.testing.assert_close(weights, theirs[name], atol=0, rtol=0)
    images = CIFAR10.split(manifest, root).test.images[:8]
    # two pinned passes of the graph against the twin's, the second on the flipped images
    assert check_parity(kept, images)["ensemble_max_abs_diff"] < 1e-4


def test_the_guided_gap_probe_attacks_the_images_the_guided_dae_learned_from(bundle) -> None:
    """`evaluation.guided_gap` on the recipe's own bundle: its training images are the ones the recipe
    attacked (each within 8/255 of the examples the recipe kept), and every accuracy is measured."""
    root, path = bundle
    manifest = load_manifest(path)
    if manifest.training["architecture"] != "rse-vgg":
        pytest.skip("only the VGG-style run trains a guided denoiser")
    result = measure(path, root, images=4)
    assert result["dae_guided_images"] == 12 and result["epsilon"] == pytest.approx(8 / 255)
    assert {name: row["images"] for name, row in result["sets"].items()} == {TRAINING: 4, TEST: 4}
    for row in result["sets"].values():
        assert all(0.0 <= row[key] <= 1.0 for key in row if key != "images")
    split = CIFAR10.split(manifest, root)
    learned = guided_training_images(split.train, 12, manifest.data.seed).images[:4]
    kept = np.load(root / "ckpt" / "dae-guided-examples-12-s0.npy")[:4]
    assert np.abs(kept - learned).max() <= 8 / 255 + 1e-6
    assert "| training images the guided DAE learned from | 4 |" in markdown(result)
    with pytest.raises(SystemExit, match="no classifier-guided DAE"):
        measure(bundle_dir(), None, images=4)
