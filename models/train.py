"""The one supervised training loop every recipe shares: cross-entropy with the model's noise layers on.

RSE is trained exactly like a plain network (the noise layers are active in `train()` mode too); recipes
that need a different loss pass `loss_fn`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
    flip: bool = False
    """Random horizontal flips (natural images; never digits)."""
    bf16: bool = False
    """Forward passes under bfloat16 autocast, the weights kept in float32: training steps ran 1.4-1.9x faster
    on the 2-core development machine's AVX512-BF16 CPU (docs/ROBUSTNESS.md, CIFAR-10 results, v4)."""
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


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flipped = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images)


def run_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    size: int,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    checkpoint: Path | None = None,
) -> tuple[float, float]:
    """Shuffled mini-batch epochs over `size` examples; `batch_loss(indices)` returns the loss to minimise.

    Shared by every trainer so that ordering, progress reporting and the recorded figures (last epoch's mean
    loss; wall seconds of the whole training, resumed runs added up) mean the same thing in every manifest.
    Leaves the model in eval mode.

    With `checkpoint`, the state after every epoch (model, optimiser, schedule, random generator) is written
    there, and a run that finds one resumes after its last epoch: long trainings survive interruptions.
    Only the training that wrote it resumes: a checkpoint of a run with another epoch count is refused,
    since its schedule (one-cycle spans the whole run) cannot be stretched to the new length.
    """
    started = time.perf_counter()
    first, mean_loss, earlier_seconds = 0, 0.0, 0.0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=_device(model), weights_only=True)
        # NOTE: checkpoints written before the count was recorded carry none, and resume as they did.
        written_for = state.get("epochs", epochs)
        if written_for != epochs:
            raise ValueError(
                f"{checkpoint} belongs to a {written_for}-epoch training and this one asks for {epochs}: "
                "give it a fresh checkpoint path"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        first, mean_loss = state["epoch"], state["loss"]
        # NOTE: the wall time of the runs before the interruption, so that a resumed training records
        # the whole training's seconds, not the last run's.
        earlier_seconds = float(state.get("seconds", 0.0))
        log.info("resumed from %s after epoch %d/%d", checkpoint, first, epochs)
    model.train()
    for epoch in range(first, epochs):
        order = torch.randperm(size, generator=generator)
        total, seen = 0.0, 0
        batches = tqdm(order.split(batch_size), desc=f"epoch {epoch + 1}/{epochs}", leave=False)
        for index in batches:
            loss = batch_loss(index)
            # NOTE: zeroed after the loss is built, not before: a loss that crafts attacks (AMC's, through
            # ART's estimators) leaves the weights' gradients of every attack step in `.grad`, and EAD's 32
            # steps of them once blew a cascade's weights up in one optimiser step.
            optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} in epoch {epoch + 1}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"), error_if_nonfinite=True)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            total += loss.item() * len(index)
            seen += len(index)
        mean_loss = total / seen
        log.info("epoch %d/%d: train loss %.5f", epoch + 1, epochs, mean_loss)
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict() if schedule is not None else None,
                "generator": generator.get_state(),
                "epoch": epoch + 1,
                "epochs": epochs,
                "loss": mean_loss,
                "seconds": earlier_seconds + time.perf_counter() - started,
            }
            torch.save(state, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
    model.eval()
    return mean_loss, earlier_seconds + time.perf_counter() - started


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning a trained model under a defense's loss; defaults are Deep Defense's reference schedule
    (SGD, momentum 0.9, weight decay 5e-4, lr halved at 80% of the steps)."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_shift: int = 0
    seed: int = 0


def finetune(
    model: nn.Module,
    data: ImageDataset,
    config: FinetuneConfig,
    loss_fn: LossFn,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Continue training `model` in place on `loss_fn`; the loss sets the model's mode itself (a defense may
    freeze BatchNorm, or craft attacks in eval mode and step in train mode)."""
    generator = generator or torch.Generator().manual_seed(config.seed)
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    steps = config.epochs * int(np.ceil(len(data) / config.batch_size))
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[int(0.8 * steps)], gamma=0.5)
    device = _device(model)

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        batch = random_shift(images[index], config.max_shift, generator)
        return loss_fn(model, batch.to(device), labels[index].to(device))

    final_loss, seconds = run_epochs(
        model, optimizer, len(data), config.epochs, config.batch_size, generator, batch_loss, schedule
    )
    return {
        "epochs": config.epochs,
        "lr": config.lr,
        "final_train_loss": round(final_loss, 5),
        "train_seconds": round(seconds, 1),
    }


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_classifier(
    model: nn.Module,
    data: ImageDataset,
    config: TrainConfig,
    loss_fn: LossFn = cross_entropy,
    checkpoint: Path | None = None,
) -> dict[str, float]:
    """Train in place with AdamW and a one-cycle schedule, on the model's device; returns the figures worth
    recording. `checkpoint`: see `run_epochs`."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    images = torch.from_numpy(data.images)
    labels = torch.from_numpy(data.labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = int(np.ceil(len(data) / config.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )

    device = _device(model)

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        batch = random_shift(images[index], config.max_shift, generator)
        if config.flip:
            batch = random_flip(batch, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            return loss_fn(model, batch.to(device), labels[index].to(device))

    final_loss, seconds = run_epochs(
        model,
        optimizer,
        len(data),
        config.epochs,
        config.batch_size,
        generator,
        batch_loss,
        schedule,
        checkpoint,
    )
    return {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "bf16": config.bf16,
        "final_train_loss": round(final_loss, 5),
        "train_seconds": round(seconds, 1),
    }


def accuracy(model: nn.Module, data: ImageDataset, batch_size: int = 500) -> float:
    """Top-1 accuracy of one forward pass per image in eval mode, in batches on the model's device (noise
    layers draw as they are set: wrap in `models.rse.noise_disabled` for the noise-free figure)."""
    device = _device(model)
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = torch.from_numpy(data.images[start : start + batch_size]).to(device)
            labels = torch.from_numpy(data.labels[start : start + batch_size]).to(device)
            correct += int((model(batch).argmax(1) == labels).sum())
    return correct / len(data)
