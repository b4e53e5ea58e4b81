"""The black-box threat model: the attacker knows nothing but the service's public HTTP API.

`ServiceProcess` starts the real service (`python -m service`, as `make serve` does) on a free loopback
port when no URL is given; `RemoteModel` is the attacker's only handle on it: JSON requests to
`/v1/models/{name}/predict`, probabilities out, every image sent counted as one query.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx
import numpy as np

from evaluation.systems import Outcome

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """`python -m service` over `repository` in a child process, ready when `__enter__` returns its URL."""

    def __init__(
        self, repository: Path, default_model: str, *, threads: int = 0, startup_timeout: float = 120.0
    ) -> None:
        self.repository = repository
        self.threads = threads
        self.default_model = default_model
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        port = free_port()
        env = {
            **os.environ,
            "DEFENDED_HOST": "127.0.0.1",
            "DEFENDED_PORT": str(port),
            "DEFENDED_MODEL_REPOSITORY": str(self.repository.resolve()),
            "DEFENDED_DEFAULT_MODEL": self.default_model,
            "DEFENDED_LOG_LEVEL": "warning",
            "DEFENDED_INTRA_OP_THREADS": str(self.threads),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the service exited during start-up: {self.process.stderr.read().decode()}"
                )
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    log.info("service ready at %s", url)
                    return url
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.__exit__(None, None, None)
        raise RuntimeError(f"the service was not ready within {self.startup_timeout:.0f} s")

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class RemoteModel:
    """One served system seen through HTTP: `purify=False` asks the service for the RSE ensemble alone."""

    def __init__(self, url: str, model: str, *, purify: bool, max_instances: int = 64) -> None:
        self.endpoint = f"{url}/v1/models/{model}/predict"
        self.purify = purify
        self.max_instances = max_instances
        self.client = httpx.Client(timeout=120)
        self.queries = 0
        """Images sent to the service so far."""
        self.requests = 0

    def close(self) -> None:
        self.client.close()

    def _predict(self, images: np.ndarray) -> list[dict]:
        # NOTE: ART hands over float64 arrays (HopSkipJump always does); the model input is float32 in
        # [0, 1], so cast and clip here rather than let the service refuse values a hair outside.
        images = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)
        predictions: list[dict] = []
        for start in range(0, len(images), self.max_instances):
            chunk = images[start : start + self.max_instances]
            response = self.client.post(
                self.endpoint, json={"instances": chunk.tolist(), "purify": self.purify}
            )
            if response.status_code != 200:
                raise RuntimeError(f"{self.endpoint} answered {response.status_code}: {response.text[:300]}")
            predictions += response.json()["predictions"]
            self.queries += len(chunk)
            self.requests += 1
        return predictions

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """[B, K] mean ensemble probabilities: what a score-based attacker sees (ART's predict_fn)."""
        return np.array([list(p["probabilities"].values()) for p in self._predict(images)], dtype=np.float32)

    def outcome(self, images: np.ndarray) -> Outcome:
        """The answer and the service's own flag and scores, for judging the attack's final images."""
        predictions = self._predict(images)
        names = sorted(predictions[0]["flags"]["scores"]) if predictions else []
        return Outcome(
            np.array([p["class_index"] for p in predictions]),
            {name: np.array([p["flags"]["scores"][name] for p in predictions]) for name in names},
            np.array([p["flags"]["adversarial"] for p in predictions], dtype=bool),
        )
