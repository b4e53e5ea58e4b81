"""The cache of trained attack sources is shared by every version of a bundle: a version whose undefended
classifier differs (architecture, noise, training settings, split) must not load another's weights."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from evaluation.recipes import recipe_for
from evaluation.surrogate import Sources, cache_name
from export.cifar10_rse import classifier
from models.data import ImageDataset
from models.train import TrainConfig
from service.manifest import load_manifest
from tests.conftest import bundle_dir


def _data(labels: list[int]) -> ImageDataset:
    images = np.random.default_rng(0).random((len(labels), 3, 32, 32), dtype=np.float32)
    return ImageDataset(images, np.array(labels, dtype=np.int64), [str(k) for k in range(10)])


def _resnet(widths: str, blocks: int) -> dict[str, str | int]:
    return {"architecture": "rse-resnet", "widths": widths, "blocks": blocks}


def test_the_cache_name_follows_architecture_settings_and_split() -> None:
    data, config = _data([0, 1, 2, 3]), TrainConfig(epochs=10, seed=1)
    small = classifier(_resnet("16,32,64", 3), 0.0, 0.0)
    name = cache_name("undefended", small, config, data)
    assert name == cache_name("undefended", classifier(_resnet("16,32,64", 3), 0.0, 0.0), config, data)
    others = {
        cache_name("undefended", classifier(_resnet("32,64,128", 3), 0.0, 0.0), config, data),
        cache_name("undefended", classifier(_resnet("16,32,64", 2), 0.0, 0.0), config, data),
        cache_name(
            "undefended",
            classifier({"architecture": "rse-vgg", "conv_plan": "16,M,32,M,64,M"}, 0.0, 0.0),
            config,
            data,
        ),
        cache_name("undefended", small, replace(config, lr=1e-2), data),
        cache_name("undefended", small, replace(config, bf16=True), data),
        cache_name("undefended", small, config, _data([0, 1, 2, 4])),
    }
    assert name.startswith("undefended-e10-s1-") and name not in others and len(others) == 6


def test_a_cached_source_is_loaded_not_retrained(tmp_path) -> None:
    """The second `Sources.undefended()` finds the first one's file and returns the same weights."""
    manifest = load_manifest(bundle_dir())
    recipe = recipe_for(manifest)
    images = np.random.default_rng(1).random((20, 1, 28, 28), dtype=np.float32)
    train = ImageDataset(images, np.arange(20, dtype=np.int64) % 10, [str(k) for k in range(10)])
    sources = Sources(recipe, manifest, train, tmp_path, epochs=1)
    first, figures = sources.undefended()
    assert "train_seconds" in figures and len(list(tmp_path.glob("undefended-e1-s*-*.pt"))) == 1
    again, figures = sources.undefended()
    assert "cached" in figures
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
