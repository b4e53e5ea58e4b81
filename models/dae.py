"""Convolutional denoising autoencoders (REDNet, Mao et al., NeurIPS 2016) whose layers carry their own
vector-Jacobian products, for the APuDAE purifier (`models/purify.py`).

The purifier needs d/dx of the reconstruction error r(x) = ||x - D(x)||^2 inside an ONNX graph, and the torch
ONNX exporters cannot export `torch.autograd.grad`. So every layer here knows, next to its forward, its VJP
written with plain torch ops (a conv's VJP is a transposed conv with the same weight, and so on), and the
composites (`VJPSequential`, `VJPResidual`) chain those. A new architecture assembled from these layers gets
its VJP for free; nothing in the VJP path touches autograd.

REDNet30 as used by APuDAE (reference code dvij542/ae-adversary-purifier, after yjn870/REDNet-pytorch):
15 conv blocks (conv + ReLU + BN, the first with stride 2), 14 conv-transpose blocks and a last stride-2
conv-transpose back to the image; every second encoder block's output is added to its mirror decoder block's
output (followed by a ReLU), and the output is ReLU(x + body(x)). The skips nest, so here they are nested
`VJPResidual`s built by one recursion (`_mirrored`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.train import run_epochs


class VJPModule(nn.Module):
    """A module that can return grad_out^T J(x), the gradient wrt x of <forward(x), grad_out>.

    Two kinds of subclass:

    - a leaf layer overrides `vjp`: its VJP needs nothing but its input x;
    - a composite overrides `forward_with_saved` and `vjp_from_saved`: its forward keeps the inputs its
      children will need, so its backward chains their VJPs without running any forward again.

    NOTE: a composite's plain `vjp(x, g)` runs its forward once (to save the activations) and then the
    backward. Callers that need both D(x) and a VJP at the same point (the reconstruction-error gradient)
    should call `forward_with_saved` once and `vjp_from_saved` with its result, which saves one forward.
    """

    def vjp(self, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        """d <forward(x), grad_out> / dx, same shape as x."""
        _, saved = self.forward_with_saved(x)
        return self.vjp_from_saved(saved, grad_out)

    def forward_with_saved(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """forward(x) and what `vjp_from_saved` needs; for a leaf layer that is x itself."""
        return self(x), x

    def vjp_from_saved(self, saved: Any, grad_out: torch.Tensor) -> torch.Tensor:
        if type(self).vjp is VJPModule.vjp:
            # NOTE: without this check a subclass that overrides neither method would recurse forever.
            raise NotImplementedError(f"{type(self).__name__} overrides neither vjp nor vjp_from_saved")
        return self.vjp(saved, grad_out)


class VJPConv2d(nn.Conv2d, VJPModule):
    """nn.Conv2d (no dilation, no groups, zero padding); its VJP is the transposed convolution."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)

    def vjp(self, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        # NOTE: a strided conv maps several input sizes to one output size (7 and 8 both give 4 at stride 2),
        # so the transposed conv needs the output_padding that recovers x's size; it is read off the shapes,
        # which are plain ints when exporting with a dynamic batch axis only.
        output_padding = tuple(
            int(size) - ((int(out) - 1) * stride - 2 * pad + kernel)
            for size, out, stride, pad, kernel in zip(
                x.shape[-2:], grad_out.shape[-2:], self.stride, self.padding, self.kernel_size, strict=True
            )
        )
        return F.conv_transpose2d(
            grad_out, self.weight, None, self.stride, self.padding, output_padding=output_padding
        )


class VJPConvTranspose2d(nn.ConvTranspose2d, VJPModule):
    """nn.ConvTranspose2d (no dilation, no groups); its VJP is the convolution with the same weight."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        output_padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            bias=bias,
        )

    def vjp(self, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        # NOTE: output_padding (< stride) only adds rows that the strided conv skips, so the conv lands on
        # x's size without being told it.
        return F.conv2d(grad_out, self.weight, None, self.stride, self.padding)


class VJPReLU(nn.ReLU, VJPModule):
    """nn.ReLU, never in place: composites keep its input for the backward."""

    def __init__(self) -> None:
        super().__init__(inplace=False)

    def vjp(self, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        # NOTE: the gradient at exactly 0 is taken as 0, as torch's own ReLU backward does.
        return grad_out * (x > 0).to(grad_out.dtype)


class VJPBatchNorm2d(nn.BatchNorm2d, VJPModule):
    """nn.BatchNorm2d with affine parameters and running statistics.

    Only the eval-mode layer is a fixed per-channel affine map; in training mode the output also depends on
    the batch statistics, which this VJP does not model, so `vjp` refuses to run there.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)

    def vjp(self, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError(
                "VJPBatchNorm2d.vjp is only valid in eval mode: call .eval() on the model first"
            )
        scale = self.weight / torch.sqrt(self.running_var + self.eps)
        return grad_out * scale.view(1, -1, 1, 1)


class VJPSequential(nn.Sequential, VJPModule):
    """nn.Sequential of VJP modules; the VJP runs the children's VJPs in reverse on the saved inputs."""

    def __init__(self, *layers: VJPModule) -> None:
        super().__init__(*layers)
        for name, layer in self.named_children():
            if not isinstance(layer, VJPModule):
                raise TypeError(f"layer {name} is a {type(layer).__name__}, not a VJPModule")

    def forward_with_saved(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        saved = []
        for layer in self:
            x, layer_saved = layer.forward_with_saved(x)
            saved.append(layer_saved)
        return x, saved

    def vjp_from_saved(self, saved: Any, grad_out: torch.Tensor) -> torch.Tensor:
        for layer, layer_saved in zip(reversed(self), reversed(saved), strict=True):
            grad_out = layer.vjp_from_saved(layer_saved, grad_out)
        return grad_out


class VJPResidual(VJPModule):
    """y = x + inner(x); `inner` must keep x's shape.

    Nesting these inside `VJPSequential`s expresses REDNet's symmetric skips: an encoder activation is the
    input of a residual whose inner sequence ends with the mirror decoder block.
    """

    def __init__(self, inner: VJPModule) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)

    def forward_with_saved(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        y, saved = self.inner.forward_with_saved(x)
        return x + y, saved

    def vjp_from_saved(self, saved: Any, grad_out: torch.Tensor) -> torch.Tensor:
        return grad_out + self.inner.vjp_from_saved(saved, grad_out)


class DenoisingAutoencoder(VJPModule):
    """D(x) = ReLU(x + body(x)), REDNet's output: the body predicts a correction to the input.

    Built from the same pieces as everything else (a residual then a ReLU), so its VJP is theirs.
    """

    def __init__(self, body: VJPModule) -> None:
        super().__init__()
        self.net = VJPSequential(VJPResidual(body), VJPReLU())

    @property
    def body(self) -> VJPModule:
        return self.net[0].inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_with_saved(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return self.net.forward_with_saved(x)

    def vjp_from_saved(self, saved: Any, grad_out: torch.Tensor) -> torch.Tensor:
        return self.net.vjp_from_saved(saved, grad_out)


def _block(layer: VJPModule, width: int, batch_norm: bool) -> VJPSequential:
    """One REDNet block: layer, ReLU, then BN (the reference's order)."""
    return VJPSequential(layer, VJPReLU(), *([VJPBatchNorm2d(width)] if batch_norm else []))


def _mirrored(encoder: list[VJPModule], decoder: list[VJPModule], skip_every: int) -> VJPSequential:
    """encoder[i] mirrors decoder[-1 - i]; the output of every `skip_every`-th encoder block is added to
    the output of its mirror's predecessor (the decoder block that restores that activation's shape),
    followed by a ReLU.

    NOTE: this reproduces the reference loop (skip sources after encoder blocks 2, 4, ...; no skip around
    the outermost pair, which the DAE's own x + body(x) covers) for any depth, odd or even block counts.
    """
    if len(encoder) <= skip_every:
        return VJPSequential(*encoder, *decoder)
    inner = _mirrored(encoder[skip_every:], decoder[:-skip_every], skip_every)
    return VJPSequential(*encoder[:skip_every], VJPResidual(inner), VJPReLU(), *decoder[-skip_every:])


def _rednet(depth: int, width: int, channels: int, batch_norm: bool) -> DenoisingAutoencoder:
    if depth < 2 or depth % 2:
        raise ValueError(f"depth must be an even number >= 2 (as many convs as conv-transposes), got {depth}")
    blocks = depth // 2
    encoder: list[VJPModule] = [_block(VJPConv2d(channels, width, 3, stride=2, padding=1), width, batch_norm)]
    encoder += [_block(VJPConv2d(width, width, 3, padding=1), width, batch_norm) for _ in range(blocks - 1)]
    decoder: list[VJPModule] = [
        _block(VJPConvTranspose2d(width, width, 3, padding=1), width, batch_norm) for _ in range(blocks - 1)
    ]
    decoder.append(VJPConvTranspose2d(width, channels, 3, stride=2, padding=1, output_padding=1))
    return DenoisingAutoencoder(_mirrored(encoder, decoder, skip_every=2))


def rednet(depth: int = 30, width: int = 64, channels: int = 3) -> DenoisingAutoencoder:
    """REDNet-`depth` with BN, as APuDAE uses it for CIFAR-10 (depth 30, width 64, 3 channels).

    The first conv halves the image and the last conv-transpose doubles it back, so H and W must be even.
    """
    return _rednet(depth, width, channels, batch_norm=True)


def mnist_dae(width: int = 32) -> DenoisingAutoencoder:
    """A 6-layer REDNet for 1x28x28 digits: conv stride 2 (28 -> 14), two convs, two conv-transposes, a
    conv-transpose stride 2 back to 28; one skip from the second conv to the second conv-transpose.

    NOTE: no BN: with it, 10 epochs on 3,500 digits ended with a worse DAE (held-out denoising error 5.4
    against 4.4, clean reconstruction error 2.7 against 1.5), and without it there is no train/eval
    difference to get wrong.
    """
    return _rednet(6, width, 1, batch_norm=False)


def reconstruction_error(dae: VJPModule, x: torch.Tensor) -> torch.Tensor:
    """r(x) = sum over C,H,W of (x - D(x))^2, per image [B]; D(x) is not clipped, as in the gradient below."""
    return ((x - dae(x)) ** 2).sum(dim=(1, 2, 3))


def reconstruction_error_grad(dae: VJPModule, x: torch.Tensor) -> torch.Tensor:
    """d r(x) / dx per image, [B,C,H,W]: 2 (e - J_D(x)^T e) with e = x - D(x), from the explicit VJP only."""
    reconstruction, saved = dae.forward_with_saved(x)
    residual = x - reconstruction
    return 2.0 * (residual - dae.vjp_from_saved(saved, residual))


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def clipped_errors(dae: VJPModule, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Per image, sum_{C,H,W} (clip(D(x), 0, 1) - x)^2 as float64: the statistic APuDAE's mu and sigma
    describe, and the served reconstruction score compares against them."""
    device = _model_device(dae)
    errors = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start : start + batch]).to(device)
        errors.append(((dae(x).clamp(0.0, 1.0) - x) ** 2).sum(dim=(1, 2, 3)).double().cpu())
    return torch.cat(errors).numpy()


def clean_error_stats(dae: VJPModule, images: np.ndarray, batch: int = 256) -> tuple[float, float]:
    """Mean and (population) standard deviation of `clipped_errors` over `images`.

    These are APuDAE's mu and sigma, so they must describe the model that gets exported: the DAE has to be
    in eval mode already (a silent switch here could hide a model exported in training mode).
    """
    if dae.training:
        raise RuntimeError("clean_error_stats needs the DAE in eval mode: call .eval() first")
    values = clipped_errors(dae, images, batch)
    return float(values.mean()), float(values.std())


@dataclass(frozen=True)
class DAETrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    noise_sigma: float = 0.3
    """Std of the Gaussian noise added to the [0, 1] pixels (the noisy input is clipped back to [0, 1])."""
    blind: bool = False
    """Draw each image's std uniformly from [0, noise_sigma] ("blind" denoising) instead of always using
    noise_sigma: a DAE that has seen only one large noise level reconstructs clean images coarsely, so its
    error hardly rises on a small (adversarial) perturbation. On CIFAR-10 blind training makes the error
    separate transfer examples far better, but not at the flag's calibrated operating point, and the
    purification it drives costs accuracy (docs/ROBUSTNESS.md, "A blind-noise DAE, built and measured")."""
    seed: int = 0


def train_dae(
    dae: VJPModule,
    images: np.ndarray,
    config: DAETrainConfig,
    checkpoint: Path | None = None,
    pairs: np.ndarray | None = None,
) -> dict[str, float]:
    """Train in place with Adam and MSE to map clip(x + noise, 0, 1) back to x; returns the figures worth
    recording and leaves the DAE in eval mode (the only mode its VJP is valid in).

    With `pairs`, row i of it is one more input the DAE must map back to images[i] (an adversarial example
    of that image, to test whether a DAE can learn to undo attacks), in the same batches as the noisy ones.
    All randomness (order, noise) comes from one generator seeded with `config.seed`; seed torch before
    building the DAE to fix its initial weights too. `checkpoint`: see `models.train.run_epochs`.
    """
    if images.ndim != 4 or images.dtype != np.float32:
        raise ValueError(f"images must be float32 [N,C,H,W], got {images.dtype} {images.shape}")
    if pairs is not None and (pairs.shape != images.shape or pairs.dtype != np.float32):
        raise ValueError(f"pairs must match images {images.shape} float32, got {pairs.dtype} {pairs.shape}")
    generator = torch.Generator().manual_seed(config.seed)
    device = _model_device(dae)
    clean = torch.from_numpy(images)
    paired = None if pairs is None else torch.from_numpy(pairs)
    optimizer = torch.optim.Adam(dae.parameters(), lr=config.lr)

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        target = clean[index]
        sigma = config.noise_sigma
        if config.blind:
            sigma = sigma * torch.rand((len(target), 1, 1, 1), generator=generator)
        noisy = (target + sigma * torch.randn(target.shape, generator=generator)).clamp(0.0, 1.0)
        if paired is not None:
            noisy, target = torch.cat([noisy, paired[index]]), torch.cat([target, target])
        return F.mse_loss(dae(noisy.to(device)), target.to(device))

    return {
        **_epochs(dae, optimizer, len(clean), config, generator, batch_loss, checkpoint),
        "noise_sigma": config.noise_sigma,
        **({"noise": "blind"} if config.blind else {}),
        **({"paired_inputs": len(pairs)} if pairs is not None else {}),
    }


def _epochs(
    dae: VJPModule,
    optimizer: torch.optim.Optimizer,
    size: int,
    config: DAETrainConfig | GuidedTrainConfig,
    generator: torch.Generator,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    checkpoint: Path | None,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, float]:
    """`models.train.run_epochs` for a DAE, and the figures every DAE training records."""
    final_loss, seconds = run_epochs(
        dae, optimizer, size, config.epochs, config.batch_size, generator, batch_loss, schedule, checkpoint
    )
    return {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "final_train_loss": round(final_loss, 6),
        "train_seconds": round(seconds, 1),
    }


@dataclass(frozen=True)
class GuidedTrainConfig:
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    bf16: bool = False
    """Forward passes under bfloat16 autocast (as `models.train.TrainConfig.bf16`)."""
    seed: int = 0
    cosine: bool = False
    """Anneal the rate to 0 over the training (cosine) instead of holding it: HGD's loss was still falling
    by about 0.01 an epoch at a constant rate after 20 epochs (cifar10-rse-hgd version 5)."""


def train_guided_dae(
    dae: VJPModule,
    guide: nn.Module,
    images: np.ndarray,
    adversarial: np.ndarray,
    config: GuidedTrainConfig,
    checkpoint: Path | None = None,
) -> dict[str, float]:
    """Train in place so that the guide's logits on D(adversarial[i]) and on D(images[i]) both match its
    logits on images[i] (L1), the loss of the high-level representation guided denoiser (HGD, Liao et al.,
    CVPR 2018); returns the figures worth recording and leaves the DAE in eval mode.

    Why not pixels: a DAE trained to map adversarial examples back to their images with MSE learns to
    reproduce them, perturbation and all (docs/ROBUSTNESS.md, the adversarial-DAE probe); a loss read through
    the classifier puts its weight on the few directions the classifier is sensitive to, which are the ones
    an attack uses. `guide` is a noise-free classifier taking [0, 1] pixels; it is only read, never trained.
    """
    if adversarial.shape != images.shape or adversarial.dtype != np.float32:
        raise ValueError(f"adversarial must match images {images.shape} float32, got {adversarial.dtype}")
    guide.eval().requires_grad_(False)
    device = _model_device(dae)
    generator = torch.Generator().manual_seed(config.seed)
    clean, attacked = torch.from_numpy(images), torch.from_numpy(adversarial)
    with torch.no_grad():
        targets = torch.cat(
            [guide(clean[i : i + 256].to(device)).float().cpu() for i in range(0, len(clean), 256)]
        )
    optimizer = torch.optim.Adam(dae.parameters(), lr=config.lr)
    steps = config.epochs * int(np.ceil(len(clean) / config.batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if config.cosine else None

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([attacked[index], clean[index]]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            logits = guide(dae(inputs))
        return (logits.float() - torch.cat([targets[index], targets[index]]).to(device)).abs().mean()

    return {
        **_epochs(dae, optimizer, len(clean), config, generator, batch_loss, checkpoint, schedule),
        "bf16": config.bf16,
        **({"lr_schedule": "cosine"} if config.cosine else {}),
    }
