"""The undefended classifier: the transfer attacks' source and the first of the four systems.

The bundle does not ship one (the service has no use for it), so it is retrained here exactly as the recipe
trains its PGD source: the same architecture with every noise level at 0, the same training split and loop,
a fixed seed. Training is deterministic on a given machine, and the weights are cached by setting, so a
second run reuses them. (The recipe's own source is not bit-identical: its initial weights depend on what the
recipe trained before it.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evaluation.recipes import BundleRecipe
from models.data import ImageDataset
from models.train import train_classifier
from service.manifest import Manifest

log = logging.getLogger(__name__)


def undefended_classifier(
    recipe: BundleRecipe,
    manifest: Manifest,
    train: ImageDataset,
    cache_dir: Path | None,
    epochs: int | None = None,
    device: str = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained surrogate (on the CPU) and how it was made (epochs, seed, seconds, cached or not);
    `device` is where it trains."""
    config = recipe.surrogate(manifest)
    config = config if epochs is None else replace(config, epochs=epochs)
    model = recipe.classifier(manifest, 0.0, 0.0)
    figures: dict[str, Any] = {"epochs": config.epochs, "seed": config.seed, "train_images": len(train)}
    path = None if cache_dir is None else cache_dir / f"undefended-e{config.epochs}-s{config.seed}.pt"
    if path is not None and path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        log.info("undefended classifier loaded from %s", path)
        return model.eval(), figures | {"cached": str(path)}
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    model = recipe.classifier(manifest, 0.0, 0.0).to(device)
    train_classifier(model, train, config)
    model = model.cpu()
    figures["train_seconds"] = round(time.perf_counter() - started, 1)
    log.info("undefended classifier trained in %.1f s", figures["train_seconds"])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval(), figures
