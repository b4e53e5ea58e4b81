"""Dynamic batching: concurrent requests for one model are queued and merged into one engine call.

Why: a defended answer costs N classifier passes plus T purification steps per image, and onnxruntime
does that work far more efficiently per image in one large call than in many small ones. One consumer task
per model takes what has queued (up to `max_batch_images`), runs it as one `infer` on the engine thread, and
hands each request back its own rows, summarised with its own `samples` and `purify`.

Requests with different options share a call: the batch runs at the largest `samples` asked for and each
request keeps the first n passes of its rows (the passes are i.i.d.), and `purify` is carried per image.
The queue is bounded in images; beyond it requests get 503 + Retry-After at once, so latency stays bounded.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import weakref
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from service import requestctx
from service.errors import EngineFailure, QueueFull
from service.metrics import ServiceMetrics
from service.pipeline import PipelineResult, score
from service.registry import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    merge: bool
    max_batch_images: int
    max_delay_seconds: float
    max_queue_images: int
    concurrent_batches: int = 1
    """Merged calls of this model that may run at once, one per engine thread."""


@dataclass
class _Request:
    images: np.ndarray
    samples: int
    purify: bool
    future: asyncio.Future[PipelineResult]
    request_id: str | None = None
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """The queue and the consumer task of one loaded model version.

    Up to `concurrent_batches` calls run at once (one per engine thread). A free thread takes a batch at
    once (after `max_delay_seconds` for company, 0 by default), so batches stay small when traffic is light
    and grow to `max_batch_images` as the threads fall behind.
    """

    def __init__(
        self, model: LoadedModel, executor: Executor, config: BatchingConfig, metrics: ServiceMetrics
    ) -> None:
        # NOTE: only a weak reference. A replaced model version must be freed once its last request is
        # done (the registry's drain), so nothing long-lived here may keep it: requests hold it strongly
        # while they wait, and the consumer task runs only while something is queued.
        self._model = weakref.ref(model)
        self.config = config
        self._executor = executor
        self._metrics = metrics
        self._queue: deque[_Request] = deque()
        self._queued_images = 0
        self._arrived = asyncio.Event()
        self._consumer: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(config.concurrent_batches)
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False
        self._labels = (model.name, model.version)
        # counters start at 0 for each model version, so that rate() and alerts see them before the first event
        for counter in (metrics.queue_rejected, metrics.queue_dropped):
            counter.labels(*self._labels)

    @property
    def model(self) -> LoadedModel:
        model = self._model()
        if model is None:  # pragma: no cover - a request holding the model is what brings us here
            raise RuntimeError(f"model {self._labels} was released while requests were queued")
        return model

    @property
    def queued_images(self) -> int:
        return self._queued_images

    async def submit(self, images: np.ndarray, samples: int, purify: bool) -> PipelineResult:
        """Queue one request's images and wait for its result."""
        if self._closing:
            raise QueueFull("the service is shutting down", retry_after=1)
        if self._queue and self._queued_images + len(images) > self.config.max_queue_images:
            self._metrics.queue_rejected.labels(*self._labels).inc()
            raise QueueFull(
                f"model '{self.model.name}' has {self._queued_images} images queued "
                f"(limit {self.config.max_queue_images}); retry shortly",
                retry_after=1,
            )
        context = requestctx.current()
        request = _Request(
            images,
            samples,
            purify,
            asyncio.get_running_loop().create_future(),
            request_id=context.request_id if context else None,
        )
        self._queue.append(request)
        self._queued_images += len(images)
        self._metrics.queue_length.labels(*self._labels).set(len(self._queue))
        self._arrived.set()
        if self._consumer is None or self._consumer.done():
            # NOTE: a fresh context, or the consumer would carry the first request's id into every log line
            self._consumer = asyncio.create_task(
                self._consume(), name=f"batcher-{self._labels[0]}", context=contextvars.Context()
            )
        return await request.future

    async def close(self) -> None:
        """Refuse new requests, let the queued and running ones finish."""
        self._closing = True
        if self._consumer is not None:
            await self._consumer
        await asyncio.gather(*self._running)

    async def _consume(self) -> None:
        """Dispatch batches until the queue is empty, then end (the next `submit` starts a new one)."""
        while self._queue:
            # NOTE: a free engine thread first, then the batch: while every thread is busy the queue fills,
            # so batches grow with load instead of waiting on a timer.
            await self._slots.acquire()
            await self._wait_for_company()
            batch = self._take_batch()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slots.release()

    async def _wait_for_company(self) -> None:
        """Give the oldest request up to `max_delay_seconds` (from its arrival) to be joined by others."""
        if not self.config.merge or self._closing:
            return
        deadline = self._queue[0].enqueued + self.config.max_delay_seconds
        while self._queued_images < self.config.max_batch_images and not self._closing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _batch_limit(self) -> int:
        """Images for the call about to start: the queue's share per engine thread, busy or idle, and at
        most `max_batch_images`.

        A call runs on one thread. A free thread that took the whole queue while the others were busy
        would leave it one long call at one thread's speed, and the next arrivals would go to the other
        threads in small calls: on a CPU, where a larger call is no faster per image, work piled onto one
        thread whose rate was near the offered load, and the median latency at half load grew with the
        number of clients (docs/PERFORMANCE.md). Taking a share leaves the rest to the next free thread."""
        share = -(-self._queued_images // self.config.concurrent_batches)
        return max(1, min(self.config.max_batch_images, share))

    def _take_batch(self) -> list[_Request]:
        """Pop the requests of the next call, oldest first; requests whose caller gave up are dropped."""
        batch: list[_Request] = []
        images, limit = 0, self._batch_limit()
        while self._queue:
            request = self._queue[0]
            if batch and (not self.config.merge or images + len(request.images) > limit):
                break
            self._queue.popleft()
            self._queued_images -= len(request.images)
            if request.future.done():  # cancelled: the client went away or the deadline passed
                self._metrics.queue_dropped.labels(*self._labels).inc()
                continue
            batch.append(request)
            images += len(request.images)
        self._metrics.queue_length.labels(*self._labels).set(len(self._queue))
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        started = time.perf_counter()
        for request in batch:
            self._metrics.queue_wait.labels(*self._labels).observe(started - request.enqueued)
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._infer_and_split, batch)
        except Exception as exc:  # one failed call must fail only its own requests
            log.exception(
                "engine call failed for %d requests on %s/%s",
                len(batch),
                *self._labels,
                extra={"request_ids": [request.request_id for request in batch]},
            )
            error = EngineFailure(f"the engine failed on this batch: {type(exc).__name__}")
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        for request, result in zip(batch, results, strict=True):
            if not request.future.done():
                request.future.set_result(result)

    def _infer_and_split(self, batch: list[_Request]) -> list[PipelineResult]:
        """On the engine thread: one merged `infer`, then each request's rows scored on their own."""
        images = np.concatenate([request.images for request in batch])
        purify = np.concatenate([np.full(len(r.images), r.purify) for r in batch])
        output = self.model.infer(images, max(r.samples for r in batch), purify)
        for graph, seconds in output.seconds.items():
            self._metrics.engine_latency.labels(*self._labels, graph).observe(seconds)
        self._metrics.engine_batch.labels(*self._labels).observe(len(images))
        self._metrics.batch_requests.labels(*self._labels).observe(len(batch))
        results, start = [], 0
        for request in batch:
            rows = slice(start, start + len(request.images))
            results.append(score(output.take(rows, request.samples), self.model.manifest.purifier))
            start = rows.stop
        return results
