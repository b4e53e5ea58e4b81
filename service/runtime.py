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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

_SESSION_LOCK = threading.Lock()
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
Providers = list[str | tuple[str, dict[str, str]]]
"""Provider names, each optionally with its provider options (e.g. `(CUDA, {"enable_cuda_graph": "1"})`)."""
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}
"""CUDA provider options every session gets. onnxruntime's default, EXHAUSTIVE, benchmarks every cuDNN
convolution algorithm for each new input shape, and the batcher and the adaptive purifier make a new shape
on almost every call. On an H100 the adaptive pipeline at batch 32 ran 8.4 images/s with it and 63.9 with
HEURISTIC (reports/bench/cifar10-h100-exhaustive against reports/bench/cifar10-h100)."""


def with_provider_options(providers: Providers) -> Providers:
    """`providers` with `CUDA_OPTIONS` under the CUDA provider (options given explicitly take precedence)."""
    merged: Providers = []
    for provider in providers:
        name, options = provider if isinstance(provider, tuple) else (provider, {})
        merged.append((name, CUDA_OPTIONS | options) if name == CUDA else provider)
    return merged


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
    path: Path, *, providers: Providers, intra_op_threads: int, seed: int | None
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
        return ort.InferenceSession(
            str(path), sess_options=options, providers=with_provider_options(providers)
        )


@dataclass(frozen=True)
class DeviceRows:
    """Rows `start` to `start + count` of a float32 device buffer [rows, C, H, W]: where a graph writes an
    output in place, so that the next graph reads it without a trip through the host."""

    buffer: ort.OrtValue
    start: int
    count: int

    @property
    def shape(self) -> list[int]:
        return [self.count, *self.buffer.shape()[1:]]

    @property
    def data_ptr(self) -> int:
        row_bytes = np.dtype(np.float32).itemsize * int(np.prod(self.buffer.shape()[1:]))
        return self.buffer.data_ptr() + self.start * row_bytes


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
        io_binding: bool | None = None,
    ) -> None:
        self.session = create_session(path, providers=providers, intra_op_threads=intra_op_threads, seed=seed)
        self.provider = self.session.get_providers()[0]
        # NOTE: CPU only: there a call's activations must stay in cache (docs/PERFORMANCE.md), while a GPU
        # wants the largest call it can get.
        self.max_rows = max_rows if self.provider == CPU else 0
        self.device = "cuda" if self.provider == CUDA else "cpu"
        """Where this session's inputs and outputs live when bound (`ort.OrtValue` device type)."""
        # NOTE: on CUDA, binding keeps the purified images on the GPU between the purifier and the ensemble;
        # on CPU there is nothing to save and plain `session.run` splits large batches (`max_rows`), so
        # binding is only on there when asked for (tests compare the two paths).
        self.io_binding = self.provider == CUDA if io_binding is None else io_binding
        """Whether the pipeline runs this engine through `run_on_device` (one call, no `max_rows` split)."""

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

    def upload(self, images: np.ndarray) -> ort.OrtValue:
        """A float32 copy of `images` on this session's device (on CPU: `images` itself, not copied)."""
        return ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(images, dtype=np.float32), self.device, 0
        )

    def _run_bound(
        self, outputs: list[str], images: ort.OrtValue, into: DeviceRows | None = None, **feeds: np.ndarray
    ) -> list[np.ndarray]:
        """`outputs` for images already on the device, in one call, copied to the host; `into` makes the
        first output land in those rows of a device buffer instead of memory of its own."""
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("images", images)
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in outputs:
            if into is not None and name == outputs[0]:
                binding.bind_output(name, self.device, 0, np.float32, into.shape, into.data_ptr)
            else:
                binding.bind_output(name, self.device, 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def io_names(self) -> tuple[list[str], list[str]]:
        return [n.name for n in self.session.get_inputs()], [n.name for n in self.session.get_outputs()]


class EnsembleEngine(GraphEngine):
    """The RSE self-ensemble graph: one call runs B x N noisy passes and returns per-pass probabilities."""

    def run(self, images: np.ndarray, samples: int) -> np.ndarray:
        """images float32 [B, C, H, W] -> probabilities float32 [B, N, K]."""
        return self._run(["probabilities"], images, samples, samples=np.asarray(samples, dtype=np.int64))[0]

    def run_on_device(self, images: ort.OrtValue, samples: int) -> np.ndarray:
        """`run` on images already on the device (`upload`, or a purifier's output rows)."""
        return self._run_bound(["probabilities"], images, samples=np.asarray(samples, dtype=np.int64))[0]


_PURIFIER_OUTPUTS = ["purified", "error_before", "error_after"]


class PurifierEngine(GraphEngine):
    """The unrolled APuDAE purification graph: one call purifies a batch."""

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """images [B,C,H,W] -> (purified [B,C,H,W], error before [B], error after [B])."""
        purified, before, after = self._run(_PURIFIER_OUTPUTS, images)
        return purified, before, after

    def run_on_device(
        self, images: ort.OrtValue, into: DeviceRows
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`run` on images already on the device, the purified images written to `into` there (and a host
        copy of them returned, for the response)."""
        purified, before, after = self._run_bound(_PURIFIER_OUTPUTS, images, into)
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
