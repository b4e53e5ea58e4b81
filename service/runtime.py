"""onnxruntime sessions: provider choice, thread settings and seeding of the in-graph noise.

NOTE on randomness: onnxruntime seeds every random kernel (RandomNormalLike, RandomUniformLike) from one
process-wide seed when the session is created, so two sessions made in one process draw the *same* noise
sequence. We therefore set a fresh seed from the OS right before each session is built (under a lock,
because the seed is global); a fixed seed is used only when the settings ask for one, in tests.
"""

from __future__ import annotations

import logging
import secrets
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

_SESSION_LOCK = threading.Lock()
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def choose_providers(preference: str) -> list[str]:
    """The provider list for `preference` ("auto", "cuda" or "cpu"), falling back to CPU with a warning."""
    available = ort.get_available_providers()
    if preference == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if preference == "cuda":
        log.warning("CUDA execution provider asked for but not available (have %s); using CPU", available)
    return [CPU]


def create_session(
    path: Path, *, providers: list[str], intra_op_threads: int, seed: int | None
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # NOTE: set deliberately rather than left to defaults: all graph optimisations (BN folding, conv
    # fusions, NCHWc layouts on CPU), one operator at a time within a call (the graphs are chains), and
    # the memory arena and pattern planning on, since every call of a model has the same shapes per batch.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    options.log_severity_level = 3
    with _SESSION_LOCK:
        ort.set_seed(seed if seed is not None else secrets.randbits(62))
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)


class GraphEngine:
    """One onnxruntime session over one graph of a bundle."""

    def __init__(
        self,
        path: Path,
        *,
        providers: list[str],
        intra_op_threads: int = 0,
        seed: int | None = None,
        max_rows: int = 0,
    ) -> None:
        self.session = create_session(path, providers=providers, intra_op_threads=intra_op_threads, seed=seed)
        self.provider = self.session.get_providers()[0]
        # NOTE: CPU only: there a call's activations must stay in cache (docs/PERFORMANCE.md), while a GPU
        # wants the largest call it can get.
        self.max_rows = max_rows if self.provider == CPU else 0

    def _run(
        self, outputs: list[str], images: np.ndarray, rows_per_image: int = 1, **feeds: np.ndarray
    ) -> list[np.ndarray]:
        """`outputs` for `images`, in calls of at most `max_rows` graph rows (`rows_per_image` each),
        concatenated along the batch; one call when unlimited."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        step = max(1, self.max_rows // rows_per_image if self.max_rows else len(images))
        parts = [
            self.session.run(outputs, {"images": images[start : start + step], **feeds})
            for start in range(0, max(len(images), 1), step)
        ]
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate(column) for column in zip(*parts, strict=True)]

    def io_names(self) -> tuple[list[str], list[str]]:
        return [n.name for n in self.session.get_inputs()], [n.name for n in self.session.get_outputs()]


class EnsembleEngine(GraphEngine):
    """The RSE self-ensemble graph: one call runs B x N noisy passes and returns per-pass probabilities."""

    def run(self, images: np.ndarray, samples: int) -> np.ndarray:
        """images float32 [B, C, H, W] -> probabilities float32 [B, N, K]."""
        return self._run(["probabilities"], images, samples, samples=np.asarray(samples, dtype=np.int64))[0]


class PurifierEngine(GraphEngine):
    """The unrolled APuDAE purification graph: one call purifies a batch."""

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """images [B,C,H,W] -> (purified [B,C,H,W], error before [B], error after [B])."""
        purified, before, after = self._run(["purified", "error_before", "error_after"], images)
        return purified, before, after


class ScreenEngine(GraphEngine):
    """The purifier's first DAE forward alone: the reconstruction error that decides who needs purifying."""

    def run(self, images: np.ndarray) -> np.ndarray:
        """images [B,C,H,W] -> reconstruction error [B] (the purifier's `error_before`)."""
        return self._run(["error_before"], images)[0]


ENGINES: dict[str, type[GraphEngine]] = {
    "ensemble": EnsembleEngine,
    "ensemble_fp16": EnsembleEngine,
    "purifier": PurifierEngine,
    "screen": ScreenEngine,
}
