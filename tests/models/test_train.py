"""The shared epoch loop's checkpoint: an interrupted training resumes to the very weights of an
uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.train import random_flip, run_epochs


def _train(checkpoint: Path | None, fail_at: int | None = None, epochs: int = 3) -> tuple[nn.Module, float]:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(2))
    calls = 0

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == fail_at:
            raise KeyboardInterrupt
        return F.cross_entropy(model(x[index]), y[index])

    generator = torch.Generator().manual_seed(3)
    _, seconds = run_epochs(model, optimizer, 32, epochs, 8, generator, batch_loss, schedule, checkpoint)
    return model, seconds


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    reference, _ = _train(None)
    checkpoint = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        _train(checkpoint, fail_at=6)  # in the second epoch: the first is saved
    first_run = torch.load(checkpoint, weights_only=True)
    assert first_run["epoch"] == 1 and first_run["seconds"] > 0
    resumed, seconds = _train(checkpoint)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 3
    assert seconds > first_run["seconds"]  # the whole training's time, not the resumed run's alone
    for a, b in zip(reference.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_random_flip_mirrors_some_images_exactly() -> None:
    images = torch.rand(64, 3, 4, 4)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    kept = (flipped == images).flatten(1).all(1)
    assert (mirrored | kept).all() and 10 < int(mirrored.sum()) < 54


def test_a_checkpoint_of_another_length_is_refused(tmp_path: Path) -> None:
    checkpoint = tmp_path / "state.pt"
    _train(checkpoint)
    with pytest.raises(ValueError, match="3-epoch training and this one asks for 5"):
        _train(checkpoint, epochs=5)
    _train(checkpoint)  # the same length resumes, here after its last epoch
