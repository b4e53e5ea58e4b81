"""Random Self-Ensemble classifiers (Liu et al., "Towards Robust Neural Networks via Random Self-ensemble",
ECCV 2018; reference code xuanqing94/RobustNet).

Fresh Gaussian noise is added to the input of every convolution, at training *and* at inference: sigma_init
on the pixels (in [0, 1]) before the first convolution, sigma_inner before the others, none before the
linear head. Prediction averages the softmax over N noisy passes (see `ensemble_probabilities`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass

import torch
from torch import nn

Pool = str  # the token "M" in a conv plan: 2x2 max-pooling


class GaussianNoise(nn.Module):
    """x + N(0, sigma^2), drawn afresh on every call, in training and in eval mode alike."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.sigma == 0.0:
            return x
        # NOTE: randn_like exports to ONNX RandomNormalLike, so the exported graph draws its own noise.
        return x + self.sigma * torch.randn_like(x)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class Normalize(nn.Module):
    """Per-channel (x - mean) / std inside the network, so clients send plain [0, 1] pixels."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class Architecture:
    """A VGG-style plan: conv widths with "M" for pooling, then hidden linear widths."""

    in_channels: int
    image_size: int
    conv_plan: tuple[int | Pool, ...]
    hidden: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dropout: float = 0.0


MNIST_SMALL = Architecture(
    in_channels=1,
    image_size=28,
    conv_plan=(32, 32, "M", 64, 64, "M"),
    hidden=(128,),
    num_classes=10,
    mean=(0.1307,),
    std=(0.3081,),
    dropout=0.25,
)


class RSEClassifier(nn.Module):
    """Conv-BN-ReLU blocks with a noise layer in front of every convolution; returns logits."""

    def __init__(self, arch: Architecture, sigma_init: float, sigma_inner: float) -> None:
        super().__init__()
        self.arch = arch
        self.sigma_init = float(sigma_init)
        self.sigma_inner = float(sigma_inner)
        layers: list[nn.Module] = [GaussianNoise(sigma_init), Normalize(arch.mean, arch.std)]
        channels, size, first = arch.in_channels, arch.image_size, True
        for step in arch.conv_plan:
            if step == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
                continue
            if not first:
                layers.append(GaussianNoise(sigma_inner))
            layers += [nn.Conv2d(channels, int(step), 3, padding=1), nn.BatchNorm2d(int(step)), nn.ReLU()]
            channels, first = int(step), False
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        width = channels * size * size
        for hidden in arch.hidden:
            head += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(arch.dropout)]
            width = hidden
        head.append(nn.Linear(width, arch.num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def noise_layers(model: nn.Module) -> list[GaussianNoise]:
    return [module for module in model.modules() if isinstance(module, GaussianNoise)]


def draws_noise(model: nn.Module) -> bool:
    """Whether any noise layer adds noise: the training-time defenses use the same networks with all at 0."""
    return any(layer.sigma > 0 for layer in noise_layers(model))


@contextmanager
def noise_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Deterministic mode, for parity tests only: every noise layer passes its input through."""
    layers = noise_layers(model)
    previous = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer, was in zip(layers, previous, strict=True):
            layer.enabled = was


def without_noise(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every noise layer off (the original keeps its noise): the
    classifier as an attacker who has its weights, but not the RSE defense, would craft on."""
    copy = deepcopy(model)
    for layer in noise_layers(copy):
        layer.enabled = False
    return copy.eval()


def ensemble_rows(images: torch.Tensor, samples: int, *, mirrored: bool = False) -> torch.Tensor:
    """[B,C,H,W] -> [B*N,C,H,W], image after image: the rows of N passes. With `mirrored`, every odd pass
    sees its image flipped left-right (test-time flip averaging): for classes that are mirror-symmetric
    (CIFAR-10, not digits) a second view of the image, worth 0.6 to 0.8 points of clean accuracy on
    CIFAR-10 at no extra compute (docs/ROBUSTNESS.md, cifar10-rse-hgd versions 8 and 9)."""
    batch = images.shape[0]
    rows = images.unsqueeze(1).expand(-1, samples, -1, -1, -1)
    if mirrored:
        odd = (torch.arange(samples, device=images.device) % 2 == 1).view(1, samples, 1, 1, 1)
        rows = torch.where(odd, rows.flip(-1), rows)
    return rows.reshape(batch * samples, *images.shape[1:])


class SelfEnsemble(nn.Module):
    """The exported ensemble graph: images [B,C,H,W] and a scalar N -> per-pass probabilities [B,N,K].

    The N copies of each image are made inside the graph (`ensemble_rows`), so the engine runs B x N rows
    in one call and every row draws its own noise on the execution device.
    """

    def __init__(self, classifier: nn.Module, *, mirrored: bool = False) -> None:
        super().__init__()
        self.classifier = classifier
        self.mirrored = mirrored

    def forward(self, images: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        n = samples.item()
        torch._check(n >= 1)
        rows = ensemble_rows(images, n, mirrored=self.mirrored)
        probabilities = torch.softmax(self.classifier(rows), dim=-1)
        return probabilities.reshape(images.shape[0], n, probabilities.shape[-1])


@torch.no_grad()
def ensemble_probabilities(
    model: nn.Module, images: torch.Tensor, samples: int, *, mirrored: bool = False
) -> torch.Tensor:
    """[B, N, K] per-pass probabilities of `model` (eval mode, noise as configured)."""
    ensemble = SelfEnsemble(model, mirrored=mirrored).eval()
    return ensemble(images, torch.tensor(samples, dtype=torch.int64))
