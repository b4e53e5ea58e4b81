"""A small residual network with Random Self-Ensemble noise layers, for CIFAR-10.

The RSE paper uses VGG16; a ResNet-20-style network (three stages of basic blocks, widths 32-64-128 by
default) trains in a fraction of VGG16's time and reaches a similar clean accuracy, which matters when the
recipe must also train on a CPU. As in `models.rse`, fresh Gaussian noise enters before *every*
convolution (the shortcut's 1x1 projection included): sigma_init on the pixels, sigma_inner elsewhere.

Every conv is followed directly by its BatchNorm inside one `nn.Sequential`, so the ONNX exporter folds
them and the evaluation twin (`evaluation.twin`) finds the folded weights under the conv's own name.
"""

from __future__ import annotations

from torch import nn

from models.rse import GaussianNoise, Normalize

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _noisy_conv(sigma: float, inputs: int, outputs: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        GaussianNoise(sigma),
        # NOTE: a bias the BN makes redundant, kept so the exporter's folded conv+BN bias keeps the conv's
        # parameter name (the evaluation twin loads weights by name).
        nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=kernel // 2),
        nn.BatchNorm2d(outputs),
    )


class NoisyBasicBlock(nn.Module):
    """ReLU(F(x) + shortcut(x)), F = noise-conv-BN-ReLU-noise-conv-BN; a noisy 1x1 projection when the
    shape changes."""

    def __init__(self, inputs: int, outputs: int, stride: int, sigma: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _noisy_conv(sigma, inputs, outputs, 3, stride),
            nn.ReLU(),
            _noisy_conv(sigma, outputs, outputs, 3, 1),
        )
        self.shortcut: nn.Module = (
            _noisy_conv(sigma, inputs, outputs, 1, stride)
            if stride != 1 or inputs != outputs
            else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class RSEResNet(nn.Module):
    """Images in [0, 1] -> logits; `widths` per stage, `blocks` basic blocks per stage."""

    def __init__(
        self,
        sigma_init: float,
        sigma_inner: float,
        widths: tuple[int, ...] = (32, 64, 128),
        blocks: int = 3,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: tuple[float, ...] = CIFAR10_MEAN,
        std: tuple[float, ...] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        self.sigma_init = float(sigma_init)
        self.sigma_inner = float(sigma_inner)
        # NOTE: the first noise is on the [0, 1] pixels, before normalisation, as in `RSEClassifier`.
        stem = _noisy_conv(sigma_init, in_channels, widths[0], 3, 1)
        layers: list[nn.Module] = [stem[0], Normalize(mean, std), *list(stem)[1:], nn.ReLU()]
        channels = widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(NoisyBasicBlock(channels, width, stride, sigma_inner))
                channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
