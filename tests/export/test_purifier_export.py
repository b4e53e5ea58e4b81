"""The exported purification graph against the PyTorch implementation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.onnx_export import export_purifier
from models.dae import mnist_dae, reconstruction_error
from models.purify import AdaptivePurifier, PurifierConfig
from service.runtime import PurifierEngine

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(1)
    dae = mnist_dae(width=8).eval()
    images = torch.rand(5, 1, 28, 28)
    errors = reconstruction_error(dae, images).detach()
    config = PurifierConfig(mu=float(errors.median()), sigma=float(errors.std()), steps=4)
    folder = tmp_path_factory.mktemp("purifier")
    paths = {
        "deterministic": export_purifier(
            dae, config, folder / "det.onnx", input_shape=(1, 28, 28), deterministic=True
        ),
        "noisy": export_purifier(dae, config, folder / "noisy.onnx", input_shape=(1, 28, 28)),
    }
    return dae, config, images, paths


def test_deterministic_graph_equals_pytorch(setup) -> None:
    dae, config, images, paths = setup
    with torch.no_grad():
        expected = [t.numpy() for t in AdaptivePurifier(dae, config, noise=False)(images)]
    actual = PurifierEngine(paths["deterministic"], providers=CPU).run(images.numpy())
    for got, want in zip(actual, expected, strict=True):
        assert np.abs(got - want).max() < 1e-4
    assert np.abs(actual[0] - images.numpy()).max() > 1e-3, "some images must have been purified"


def test_noisy_graph_is_one_file_with_uniform_noise(setup) -> None:
    _, _, images, paths = setup
    model = onnx.load(str(paths["noisy"]), load_external_data=False)
    assert "RandomUniformLike" in {node.op_type for node in model.graph.node}
    assert not any(init.external_data for init in model.graph.initializer)
    engine = PurifierEngine(paths["noisy"], providers=CPU)
    first, second = engine.run(images.numpy())[0], engine.run(images.numpy())[0]
    assert not np.allclose(first, second)


def test_batch_axis_is_dynamic(setup) -> None:
    _, _, images, paths = setup
    engine = PurifierEngine(paths["deterministic"], providers=CPU)
    one_by_one = np.concatenate([engine.run(images.numpy()[i : i + 1])[0] for i in range(len(images))])
    assert np.abs(one_by_one - engine.run(images.numpy())[0]).max() < 1e-5


def test_export_of_the_vjp_path_has_no_autograd(setup) -> None:
    _, _, _, paths = setup
    ops = {node.op_type for node in onnx.load(str(paths["deterministic"])).graph.node}
    assert "ConvTranspose" in ops and "Conv" in ops  # forward convs and their VJPs
    assert Path(paths["deterministic"]).stat().st_size < 5_000_000
