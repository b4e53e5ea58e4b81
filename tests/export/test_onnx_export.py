"""The exported ensemble graph against its PyTorch source, and the randomness it must keep."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.onnx_export import export_ensemble
from models.rse import Architecture, RSEClassifier, ensemble_probabilities, noise_disabled
from service.runtime import EnsembleEngine

TINY = Architecture(
    in_channels=1,
    image_size=28,
    conv_plan=(8, "M", 16, "M"),
    hidden=(32,),
    num_classes=10,
    mean=(0.13,),
    std=(0.31,),
)
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def tiny_model() -> RSEClassifier:
    torch.manual_seed(0)
    model = RSEClassifier(TINY, sigma_init=0.3, sigma_inner=0.1)
    # NOTE: non-trivial BatchNorm statistics, so parity also checks that eval-mode BN is exported right.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def graphs(tiny_model: RSEClassifier, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("graphs")
    return {
        "noisy": export_ensemble(tiny_model, folder / "noisy.onnx", input_shape=(1, 28, 28)),
        "deterministic": export_ensemble(
            tiny_model, folder / "deterministic.onnx", input_shape=(1, 28, 28), deterministic=True
        ),
    }


def images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 1, 28, 28), dtype=np.float32)


def test_export_is_one_self_contained_file(graphs: dict[str, Path]) -> None:
    for path in graphs.values():
        assert sorted(p.name for p in path.parent.iterdir()) == ["deterministic.onnx", "noisy.onnx"]
        model = onnx.load(str(path), load_external_data=False)
        assert not any(init.external_data for init in model.graph.initializer)
    ops = {node.op_type for node in onnx.load(str(graphs["noisy"])).graph.node}
    assert "RandomNormalLike" in ops


def test_parity_with_torch_in_deterministic_mode(tiny_model: RSEClassifier, graphs: dict[str, Path]) -> None:
    x = images(6)
    engine = EnsembleEngine(graphs["deterministic"], providers=CPU)
    with noise_disabled(tiny_model):
        expected = ensemble_probabilities(tiny_model, torch.from_numpy(x), samples=4).numpy()
    actual = engine.run(x, 4)
    assert actual.shape == (6, 4, 10)
    assert np.abs(actual - expected).max() < 1e-4


def test_a_mirrored_ensemble_classifies_every_odd_pass_on_the_flipped_image(
    tiny_model: RSEClassifier, tmp_path: Path
) -> None:
    path = export_ensemble(
        tiny_model, tmp_path / "mirrored.onnx", input_shape=(1, 28, 28), deterministic=True, mirrored=True
    )
    x = images(3)
    passes = EnsembleEngine(path, providers=CPU).run(x, 5)
    with noise_disabled(tiny_model):
        plain, flipped = (
            ensemble_probabilities(tiny_model, torch.from_numpy(view.copy()), samples=1).numpy()
            for view in (x, x[..., ::-1])
        )
        torch_passes = ensemble_probabilities(tiny_model, torch.from_numpy(x), samples=5, mirrored=True)
    assert np.abs(plain - flipped).max() > 1e-3, "random images: the two views must differ"
    assert np.abs(passes[:, 0::2] - plain).max() < 1e-4
    assert np.abs(passes[:, 1::2] - flipped).max() < 1e-4
    assert np.abs(passes - torch_passes.numpy()).max() < 1e-4


def test_batched_call_equals_separate_calls(graphs: dict[str, Path]) -> None:
    x = images(5, seed=1)
    engine = EnsembleEngine(graphs["deterministic"], providers=CPU)
    batched = engine.run(x, 7)
    separate = np.stack([engine.run(x, 1)[:, 0] for _ in range(7)], axis=1)
    assert np.abs(batched - separate).max() < 1e-5
    one_by_one = np.concatenate([engine.run(x[i : i + 1], 7) for i in range(5)])
    assert np.abs(batched - one_by_one).max() < 1e-5


def test_randomness_survives_export(graphs: dict[str, Path]) -> None:
    engine = EnsembleEngine(graphs["noisy"], providers=CPU)
    same = np.repeat(images(1), 3, axis=0)  # three identical images
    first = engine.run(same, 8)
    # every row (image copy x pass) of one call drew its own noise ...
    rows = first.reshape(-1, 10)
    assert len({row.tobytes() for row in rows}) == len(rows)
    # ... and the next call draws fresh noise
    assert not np.allclose(first, engine.run(same, 8))


def test_noise_statistics_match_torch(tiny_model: RSEClassifier, graphs: dict[str, Path]) -> None:
    """The in-graph noise has the trained sigmas: the spread of the passes matches torch's within MC error."""
    x = images(4, seed=3)
    onnx_passes = EnsembleEngine(graphs["noisy"], providers=CPU).run(x, 2000)
    torch_passes = ensemble_probabilities(tiny_model, torch.from_numpy(x), samples=2000).numpy()
    assert np.abs(onnx_passes.mean(axis=1) - torch_passes.mean(axis=1)).max() < 0.01
    onnx_spread, torch_spread = onnx_passes.std(axis=1).mean(), torch_passes.std(axis=1).mean()
    assert torch_spread > 0
    assert abs(onnx_spread / torch_spread - 1) < 0.1


def test_two_sessions_in_one_process_draw_different_noise(graphs: dict[str, Path]) -> None:
    x = images(2)
    a = EnsembleEngine(graphs["noisy"], providers=CPU).run(x, 4)
    b = EnsembleEngine(graphs["noisy"], providers=CPU).run(x, 4)
    assert not np.allclose(a, b)
    # a fixed seed (test mode only) makes the noise reproducible
    c = EnsembleEngine(graphs["noisy"], providers=CPU, seed=7).run(x, 4)
    d = EnsembleEngine(graphs["noisy"], providers=CPU, seed=7).run(x, 4)
    assert np.array_equal(c, d)


def test_two_processes_draw_different_noise(graphs: dict[str, Path]) -> None:
    script = (
        "import sys, numpy as np\n"
        "from service.runtime import EnsembleEngine\n"
        "engine = EnsembleEngine(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "out = engine.run(np.full((1, 1, 28, 28), 0.5, np.float32), 4)\n"
        "print(out.tobytes().hex())\n"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", script, str(graphs["noisy"])],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout.strip()
        for _ in range(2)
    ]
    assert runs[0] and runs[0] != runs[1]
