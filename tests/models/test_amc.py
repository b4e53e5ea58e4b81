"""AMC: the batch mix follows the paper's 80/20 rule, and every attack of the cascade really perturbs within
its budget against the model being trained."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.amc import ATTACK_ORDER, CascadeAttacks, attack_shares, cascade_batch, stage_attacks
from models.attacks import virtual_adversarial


@pytest.mark.parametrize("batch", [64, 100, 37])
@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_newest_attack_takes_80_percent_and_the_others_share_the_rest(batch: int, stage: int) -> None:
    shares = attack_shares(batch, stage, torch.Generator().manual_seed(batch + stage))
    assert len(shares) == stage
    assert sorted(torch.cat(shares).tolist()) == list(range(batch))  # every image once, none twice
    if stage == 1:
        assert len(shares[0]) == batch
        return
    older = [len(s) for s in shares[:-1]]
    assert len(set(older)) == 1  # equal parts
    # NOTE: rounding leftovers (fewer than `stage` images) go to the newest attack.
    assert 0.8 * batch - 1 <= len(shares[-1]) <= 0.8 * batch + stage


def test_each_image_gets_the_attack_assigned_to_it() -> None:
    images = torch.zeros(50, 1, 4, 4)
    marks = {name: float(i + 1) for i, name in enumerate(ATTACK_ORDER)}
    attacks = {name: (lambda x, _, m=mark: x + m) for name, mark in marks.items()}
    generator = torch.Generator().manual_seed(3)
    mixed = cascade_batch(attacks, 4, images, torch.zeros(50, dtype=torch.long), generator)
    expected = attack_shares(50, 4, torch.Generator().manual_seed(3))
    for name, index in zip(ATTACK_ORDER, expected, strict=True):
        assert torch.all(mixed[index] == marks[name])


@pytest.fixture
def model_and_batch(small_cnn, mnist_split):
    images = torch.from_numpy(mnist_split.test.images[:8])
    labels = torch.from_numpy(mnist_split.test.labels[:8])
    return small_cnn, images, labels


def test_the_four_attacks_stay_within_their_budgets(model_and_batch) -> None:
    model, images, labels = model_and_batch
    settings = CascadeAttacks(pgd_steps=3, vat_iterations=2)
    attacks = stage_attacks(model, settings, 10)
    for name in ATTACK_ORDER:
        adversarial = attacks[name](images, labels)
        delta = (adversarial - images).flatten(1)
        assert adversarial.min() >= 0 and adversarial.max() <= 1, name
        if name in ("FGSM", "PGD"):
            assert 0 < delta.abs().max() <= settings.pgd_eps + 1e-5, name
        if name == "VAT":
            assert 0 < delta.norm(dim=1).max() <= settings.vat_eps + 1e-4
        if name == "EAD":
            # NOTE: EAD returns an image changed only where it found an adversarial example; at the MNIST
            # reference constant (1e-3, four search steps) that measured nowhere on a trained model.
            changed = delta.abs().amax(dim=1) > 0
            with torch.no_grad():
                assert torch.all(model(adversarial[changed]).argmax(1) != labels[changed])


def test_elastic_net_finds_examples_with_a_larger_constant(model_and_batch) -> None:
    model, images, labels = model_and_batch
    ead = stage_attacks(model, CascadeAttacks(ead_initial_const=1.0), 10)["EAD"]
    adversarial = ead(images, labels)
    with torch.no_grad():
        turned = (model(images).argmax(1) == labels) & (model(adversarial).argmax(1) != labels)
    assert turned.any()
    assert torch.all((adversarial - images).flatten(1).abs().amax(dim=1)[turned] > 0)


def test_virtual_adversarial_direction_moves_the_prediction_more_than_a_random_one(model_and_batch) -> None:
    model, images, _ = model_and_batch
    eps = 2.0
    adversarial = virtual_adversarial(model, images, eps=eps, xi=1.0, iterations=3)
    random = torch.randn_like(images)
    random = (images + eps * random / random.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)

    def divergence(x: torch.Tensor) -> float:
        with torch.no_grad():
            reference = F.log_softmax(model(images), 1)
            return float(F.kl_div(F.log_softmax(model(x), 1), reference, log_target=True, reduction="sum"))

    assert divergence(adversarial) > 2 * divergence(random)
    assert np.isfinite(divergence(adversarial))
