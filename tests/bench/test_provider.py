"""`python -m bench --provider cuda` where there is no CUDA: a clear refusal, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import onnxruntime as ort
import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is here")
def test_cuda_without_cuda_exits_with_a_message() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--provider", "cuda", "--quick", "--skip-http", "--out", "unused"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "--provider cuda: CUDAExecutionProvider is not available" in done.stderr
    assert "Traceback" not in done.stderr
