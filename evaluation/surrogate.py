"""The models attacks are crafted on when they do not know the defense: the undefended classifier (the
transfer attacks' source and the first of the systems) and the transfer surrogates (other architectures).

The bundle ships neither (the service has no use for them), so they are trained here exactly as the recipe
trains its PGD source: the undefended classifier is the same architecture with every noise level at 0, the
surrogates are the recipe's other architectures; all on the bundle's training split, with the shared loop and
a fixed seed each. Training is deterministic on a given machine, and the weights are cached by setting, so a
second run reuses them. (The recipe's own source is not bit-identical: its initial weights depend on what the
recipe trained before it.)
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evaluation.recipes import BundleRecipe
from evaluation.systems import log_mean_softmax
from models.data import ImageDataset
from models.rse import RSEClassifier
from models.train import TrainConfig, train_classifier
from service.manifest import Manifest

log = logging.getLogger(__name__)


class SoftmaxAverage(nn.Module):
    """An ensemble of classifiers as one: log of their mean softmax, so an attack's gradient follows the
    ensemble's decision (Dong et al. 2018 fuse logits; averaging probabilities is how our ensembles vote)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return log_mean_softmax(torch.stack([member(x) for member in self.members], dim=1))


def cache_name(name: str, model: nn.Module, config: TrainConfig, train: ImageDataset) -> str:
    """File name of a trained model's cached weights.

    Every version of a bundle shares one cache folder, so the name carries a digest of everything the
    weights depend on (architecture with its noise levels, training settings, training images): a version
    with another architecture or split then trains its own instead of loading one that does not fit.
    """
    digest = hashlib.sha256(repr((model, config, len(train))).encode())
    # NOTE: the labels and a few images stand for the split: hashing all 49,000 images costs seconds.
    digest.update(train.labels.tobytes())
    digest.update(train.images[:8].tobytes())
    return f"{name}-e{config.epochs}-s{config.seed}-{digest.hexdigest()[:10]}.pt"


def _trained(
    name: str,
    build: Callable[[], nn.Module],
    config: TrainConfig,
    train: ImageDataset,
    cache_dir: Path | None,
    device: str,
) -> tuple[nn.Module, dict[str, Any]]:
    """`build()` trained on `train` under `config` (on the CPU when returned), or its cached weights, and
    how it was made (epochs, seed, seconds, cached or not)."""
    figures: dict[str, Any] = {"epochs": config.epochs, "seed": config.seed, "train_images": len(train)}
    model = build()
    path = None if cache_dir is None else cache_dir / cache_name(name, model, config, train)
    if path is not None and path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        log.info("%s loaded from %s", name, path)
        return model.eval(), figures | {"cached": str(path)}
    started = time.perf_counter()
    # NOTE: built again after seeding, so that the initial weights are the seed's (the first build only
    # named the cache file); a cached load leaves the global generator untouched, as it always did.
    torch.manual_seed(config.seed)
    model = build().to(device)
    train_classifier(model, train, config)
    model = model.cpu()
    figures["train_seconds"] = round(time.perf_counter() - started, 1)
    log.info("%s trained in %.1f s", name, figures["train_seconds"])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval(), figures


@dataclass(frozen=True)
class Sources:
    """Trains, or loads from `cache_dir`, the models one bundle's attacks are crafted on, all on its training
    split under the recipe's settings (`epochs` overriding its count) on `device`."""

    recipe: BundleRecipe
    manifest: Manifest
    train: ImageDataset
    cache_dir: Path | None
    epochs: int | None = None
    device: str = "cpu"

    def _config(self) -> TrainConfig:
        config = self.recipe.surrogate(self.manifest)
        return config if self.epochs is None else replace(config, epochs=self.epochs)

    def undefended(self) -> tuple[nn.Module, dict[str, Any]]:
        """The bundle's architecture without noise, trained plainly."""
        build = partial(self.recipe.classifier, self.manifest, 0.0, 0.0)
        return _trained("undefended", build, self._config(), self.train, self.cache_dir, self.device)

    def surrogates(self) -> tuple[SoftmaxAverage, dict[str, dict[str, Any]]]:
        """The recipe's surrogate architectures, trained like the undefended classifier but each with its own
        seed (the undefended classifier's + 1, + 2, ...), as one ensemble; and the figures of each."""
        base = self._config()
        members, figures = [], {}
        for offset, (name, architecture) in enumerate(self.recipe.surrogates.items(), start=1):
            model, figures[name] = _trained(
                f"surrogate-{name}",
                partial(RSEClassifier, architecture, 0.0, 0.0),
                replace(base, seed=base.seed + offset),
                self.train,
                self.cache_dir,
                self.device,
            )
            members.append(model)
        return SoftmaxAverage(members).eval(), figures
