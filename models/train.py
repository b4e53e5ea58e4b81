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
    started = time.perf_counter()
    model.train()
    loss_value = seen = 0.0
    for epoch in range(config.epochs):
        order = torch.randperm(len(data), generator=generator)
        loss_value, seen = 0.0, 0.0
        batches = tqdm(order.split(config.batch_size), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
        for index in batches:
            batch = random_shift(images[index], config.max_shift, generator)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch, labels[index])
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_value += loss.item() * len(index)
            seen += len(index)
        log.info("epoch %d/%d: train loss %.4f", epoch + 1, config.epochs, loss_value / seen)
    model.eval()
    return {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "final_train_loss": round(loss_value / seen, 5),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
