"""`python -m evaluation --device cuda` where torch has no CUDA: a clear refusal before any work, not a
traceback deep in the first model's `.to("cuda")` after the bundle, the data and the parity check loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evaluation.__main__ import main
from tests.conftest import bundle_dir


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")
def test_cuda_without_cuda_exits_with_a_message(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit, match=r"--device cuda: torch .* sees no CUDA device"):
            main(["--quick", "--bundle", str(bundle_dir()), "--out", str(tmp_path), "--device", "cuda"])
    finally:
        torch.set_num_threads(threads)
    assert not any(tmp_path.iterdir())  # nothing written
