"""Adversarial Model Cascades (Vijaykeerthy, Suri, Mehta, Kumaraguru, IJCNN 2019; reference code
iamgroot42/Hardening-Deep-Neural-Networks-via-Adversarial-Model-Cascades, `Code/bagging.py`).

Stage 0 is a plainly trained model. Stage k fine-tunes stage k-1 against the first k attacks of a fixed order,
so the model is hardened against each new attack without forgetting the earlier ones. Every batch is the
clean images plus adversarial versions crafted on the fly against the model being trained: the newest attack
takes 80% of them, the earlier attacks share the other 20%.

Training attacks come from ART where ART is fast enough in a training loop (FGSM, EAD, PGD, the latter running
ART's PyTorch-native implementation). ART's Virtual Adversarial Method estimates the gradient by finite
differences, one forward pass per pixel per iteration: over a thousand training steps per batch at the
reference settings (`python -m bench.training_attacks`); the cascade uses `models.attacks.virtual_adversarial`, the power iteration
with autograd that the reference code gets from cleverhans.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.attacks import art_classifier, virtual_adversarial
from models.data import ImageDataset
from models.train import FinetuneConfig, LossFn, finetune

log = logging.getLogger(__name__)

ATTACK_ORDER = ("FGSM", "VAT", "EAD", "PGD")
NEWEST_SHARE = 0.8


@dataclass(frozen=True)
class CascadeAttacks:
    """The reference settings of the four attacks, MNIST's (the reference's CIFAR-10 values are in issue 6)."""

    fgsm_eps: float = 0.3
    vat_eps: float = 5.0
    vat_xi: float = 1.0
    vat_iterations: int = 6
    ead_binary_search_steps: int = 4
    ead_max_iter: int = 8
    ead_beta: float = 0.01
    ead_initial_const: float = 1e-3
    ead_learning_rate: float = 0.1
    pgd_eps: float = 0.3
    pgd_steps: int = 15
    pgd_step_fraction: float = 0.1
    """PGD step size as a share of its ε."""


Attack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(clean images, labels) -> adversarial images, crafted against the model as it is now."""


def stage_attacks(model: nn.Module, settings: CascadeAttacks, num_classes: int) -> dict[str, Attack]:
    """The four attacks, each bound to `model`; ART's wrapper sees the weights as they are trained."""
    from art.attacks.evasion import ElasticNet, FastGradientMethod, ProjectedGradientDescent

    def estimator(images: torch.Tensor):
        return art_classifier(model, tuple(images.shape[1:]), num_classes)

    def art_attack(build: Callable[[object], object]) -> Attack:
        def run(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            attack = build(estimator(images))
            adversarial = attack.generate(x=images.numpy(), y=labels.numpy())  # type: ignore[attr-defined]
            return torch.from_numpy(adversarial.astype(np.float32))

        return run

    return {
        "FGSM": art_attack(lambda est: FastGradientMethod(est, eps=settings.fgsm_eps, batch_size=512)),
        "VAT": lambda images, _: virtual_adversarial(
            model, images, eps=settings.vat_eps, xi=settings.vat_xi, iterations=settings.vat_iterations
        ),
        "EAD": art_attack(
            lambda est: ElasticNet(
                est,
                binary_search_steps=settings.ead_binary_search_steps,
                max_iter=settings.ead_max_iter,
                beta=settings.ead_beta,
                initial_const=settings.ead_initial_const,
                learning_rate=settings.ead_learning_rate,
                batch_size=512,
                verbose=False,
            )
        ),
        "PGD": art_attack(
            lambda est: ProjectedGradientDescent(
                est,
                eps=settings.pgd_eps,
                eps_step=settings.pgd_eps * settings.pgd_step_fraction,
                max_iter=settings.pgd_steps,
                num_random_init=1,
                batch_size=512,
                verbose=False,
            )
        ),
    }


def attack_shares(batch: int, stage: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Split a shuffled batch among the stage's `stage` attacks (in ATTACK_ORDER): all of it to the only attack
    at stage 1, later 80% to the newest and the rest in equal parts to the earlier ones. Returns one index
    tensor per attack, oldest first; rounding leftovers go to the newest attack."""
    order = torch.randperm(batch, generator=generator)
    if stage == 1:
        return [order]
    older = round(batch * (1 - NEWEST_SHARE)) // (stage - 1)
    shares = [order[i * older : (i + 1) * older] for i in range(stage - 1)]
    return [*shares, order[(stage - 1) * older :]]


def cascade_batch(
    attacks: dict[str, Attack],
    stage: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Adversarial versions of `images`, each crafted by the attack `attack_shares` assigns it."""
    adversarial = images.clone()
    for name, index in zip(ATTACK_ORDER[:stage], attack_shares(len(images), stage, generator), strict=True):
        if len(index):
            adversarial[index] = attacks[name](images[index], labels[index])
    return adversarial


def cascade_loss(attacks: dict[str, Attack], stage: int, generator: torch.Generator) -> LossFn:
    """Cross-entropy on the clean batch plus its adversarial versions for the given stage."""

    def loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adversarial = cascade_batch(attacks, stage, images, labels, generator)
        # NOTE: the attacks run the model in eval mode; the step itself trains.
        model.train()
        return F.cross_entropy(model(torch.cat([images, adversarial])), torch.cat([labels, labels]))

    return loss


def train_cascade(
    model: nn.Module,
    data: ImageDataset,
    stages: int,
    config: FinetuneConfig,
    settings: CascadeAttacks,
) -> dict[str, object]:
    """Fine-tune the plainly trained `model` in place through stages 1..`stages`; returns the figures worth
    recording. The served model is the last stage (the paper's "single model")."""
    num_classes = int(data.labels.max()) + 1
    attacks = stage_attacks(model, settings, num_classes)
    figures: dict[str, object] = {"amc_stages": stages, "amc_attack_order": list(ATTACK_ORDER[:stages])}
    for stage in range(1, stages + 1):
        generator = torch.Generator().manual_seed(config.seed + stage)
        result = finetune(model, data, config, cascade_loss(attacks, stage, generator), generator)
        log.info("AMC stage %d (%s): %s", stage, "+".join(ATTACK_ORDER[:stage]), result)
        figures[f"amc_stage{stage}_seconds"] = result["train_seconds"]
        figures[f"amc_stage{stage}_final_train_loss"] = result["final_train_loss"]
    figures.update({f"amc_{k}": v for k, v in asdict(settings).items()})
    return figures
