"""The one supervised training loop every recipe shares: cross-entropy with the model's noise layers on.

RSE is trained exactly like a plain network (the noise layers are active in `train()` mode too); recipes
that need a different loss pass `loss_fn`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from models.data import ImageDataset

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 2
    """Random translation in pixels (zero padding), the augmentation that matters most on 4,000 digits."""
    seed: int = 0


def cross_entropy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images), labels)


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels in x and y, filling with zeros."""
    if max_shift == 0:
        return images
    padded = F.pad(images, [max_shift] * 4)
    height, width = images.shape[-2:]
    offsets = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator)
    return torch.stack(
        [padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


def run_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    size: int,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> tuple[float, float]:
    """Shuffled mini-batch epochs over `size` examples; `batch_loss(indices)` returns the loss to minimise.

    Shared by every trainer so that ordering, progress reporting and the recorded figures (last epoch's mean
    loss, wall seconds) mean the same thing in every manifest. Leaves the model in eval mode.
    """
    started = time.perf_counter()
    model.train()
    loss_value = seen = 0.0
    for epoch in range(epochs):
        order = torch.randperm(size, generator=generator)
        loss_value, seen = 0.0, 0.0
        batches = tqdm(order.split(batch_size), desc=f"epoch {epoch + 1}/{epochs}", leave=False)
        for index in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = batch_loss(index)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            loss_value += loss.item() * len(index)
            seen += len(index)
        log.info("epoch %d/%d: train loss %.5f", epoch + 1, epochs, loss_value / seen)
    model.eval()
    return loss_value / seen, time.perf_counter() - started


def train_classifier(
    model: nn.Module, data: ImageDataset, config: TrainConfig, loss_fn: LossFn = cross_entropy
) -> dict[str, float]:
    """Train in place with AdamW and a one-cycle schedule; returns the figures worth recording."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    images = torch.from_numpy(data.images)
    labels = torch.from_numpy(data.labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = int(np.ceil(len(data) / config.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        return loss_fn(model, random_shift(images[index], config.max_shift, generator), labels[index])

    final_loss, seconds = run_epochs(
        model, optimizer, len(data), config.epochs, config.batch_size, generator, batch_loss, schedule
    )
    return {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "final_train_loss": round(final_loss, 5),
        "train_seconds": round(seconds, 1),
    }
