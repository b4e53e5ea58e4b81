"""The dynamic batcher over the shipped bundle's real engines: merging, routing, options, backpressure."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from service.batching import Batcher, BatchingConfig, _Request
from service.errors import EngineFailure, QueueFull
from service.metrics import ServiceMetrics
from service.registry import LoadedModel, LoadOptions, load_bundle
from tests.conftest import EXAMPLES, bundle_dir

pytestmark = pytest.mark.anyio
CONFIDENT_DIGITS = (0, 1, 2, 3, 4, 6, 7, 8, 9)  # digit-5.png is read as an 8 by the shipped model


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_bundle(bundle_dir(), LoadOptions(["CPUExecutionProvider"], skip_z=0.0))


def digit(d: int) -> np.ndarray:
    pixels = np.asarray(Image.open(EXAMPLES / f"digit-{d}.png"), dtype=np.float32) / 255
    return pixels[None, None]


def make_batcher(model: LoadedModel, **overrides) -> tuple[Batcher, ServiceMetrics]:
    defaults = {"merge": True, "max_batch_images": 64, "max_delay_seconds": 0.2, "max_queue_images": 256}
    config = BatchingConfig(**{**defaults, **overrides})
    metrics = ServiceMetrics()
    return Batcher(model, ThreadPoolExecutor(config.concurrent_batches), config, metrics), metrics


def sample(metrics: ServiceMetrics, name: str, model: LoadedModel) -> float:
    value = metrics.registry.get_sample_value(name, {"model": model.name, "version": model.version})
    return 0.0 if value is None else value


async def test_concurrent_requests_merge_and_each_gets_its_own_answer(model: LoadedModel) -> None:
    batcher, metrics = make_batcher(model)
    requests = [(d, samples, purify) for d, samples, purify in zip(
        CONFIDENT_DIGITS, (1, 3, 10, 24, 7, 10, 64, 2, 5), (True, False) * 4 + (True,), strict=True
    )]  # fmt: skip
    # one request carries two images, to check row routing inside a request
    payloads = [np.concatenate([digit(d), digit(9 - d)]) if d == 3 else digit(d) for d, _, _ in requests]
    results = await asyncio.gather(
        *(batcher.submit(images, s, p) for images, (_, s, p) in zip(payloads, requests, strict=True))
    )
    await batcher.close()
    assert sample(metrics, "defended_batch_requests_count", model) == 1, "all requests shared one call"
    assert sample(metrics, "defended_batch_requests_sum", model) == len(requests)
    for (d, samples, purify), result in zip(requests, results, strict=True):
        expected = [d, 9 - d] if d == 3 else [d]
        assert result.summary.class_index.tolist() == expected
        assert result.summary.samples == samples
        assert (result.purification is not None) == purify
        if purify:
            assert set(result.scores) >= {"reconstruction", "purification_changed_label"}


async def test_batching_off_runs_one_call_per_request(model: LoadedModel) -> None:
    batcher, metrics = make_batcher(model, merge=False)
    results = await asyncio.gather(*(batcher.submit(digit(d), 4, True) for d in (1, 2, 3)))
    await batcher.close()
    assert [r.summary.class_index.item() for r in results] == [1, 2, 3]
    assert sample(metrics, "defended_batch_requests_count", model) == 3
    assert sample(metrics, "defended_batch_requests_sum", model) == 3


async def test_large_batches_split_at_max_batch_images(model: LoadedModel) -> None:
    batcher, metrics = make_batcher(model, max_batch_images=4)
    results = await asyncio.gather(
        *(batcher.submit(np.repeat(digit(7), 3, axis=0), 2, False) for _ in range(3))
    )
    await batcher.close()
    assert all(r.summary.class_index.tolist() == [7, 7, 7] for r in results)
    # 3 + 3 > 4, so each 3-image request runs in its own call
    assert sample(metrics, "defended_engine_batch_images_count", model) == 3


async def test_full_queue_refuses_with_retry_after(model: LoadedModel) -> None:
    batcher, metrics = make_batcher(model, max_queue_images=4)
    outcomes = await asyncio.gather(
        *(batcher.submit(digit(1), 2, False) for _ in range(10)), return_exceptions=True
    )
    await batcher.close()
    refused = [o for o in outcomes if isinstance(o, QueueFull)]
    served = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(served) == 4 and len(refused) == 6
    assert refused[0].status_code == 503 and refused[0].headers == {"Retry-After": "1"}
    assert sample(metrics, "defended_queue_rejected_total", model) == 6
    assert sample(metrics, "defended_queue_length", model) == 0


async def test_engine_error_fails_only_its_batch(model: LoadedModel) -> None:
    """A real onnxruntime error (an input the graph cannot take) fails that call's requests only."""
    batcher, _ = make_batcher(model, max_delay_seconds=0.0)
    bad = np.zeros((1, 1, 5, 5), dtype=np.float32)
    with pytest.raises(EngineFailure) as failure:
        await batcher.submit(bad, 2, True)
    assert failure.value.status_code == 500
    result = await batcher.submit(digit(4), 2, True)
    await batcher.close()
    assert result.summary.class_index.tolist() == [4]


async def test_close_drains_what_was_queued_then_refuses(model: LoadedModel) -> None:
    batcher, _ = make_batcher(model)
    pending = [asyncio.ensure_future(batcher.submit(digit(d), 2, False)) for d in (6, 8)]
    await asyncio.sleep(0)
    await batcher.close()
    assert [p.result().summary.class_index.item() for p in pending] == [6, 8]
    with pytest.raises(QueueFull, match="shutting down"):
        await batcher.submit(digit(6), 2, False)


async def test_http_queue_full_is_a_json_503_with_retry_after() -> None:
    import httpx

    from service.app import create_app
    from service.settings import Settings
    from tests.conftest import SHIPPED_REPOSITORY

    app = create_app(
        Settings(model_repository=SHIPPED_REPOSITORY, max_queue_images=1, max_queue_delay_ms=300)
    )
    files = {"files": ("d.png", (EXAMPLES / "digit-2.png").read_bytes(), "image/png")}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            responses = await asyncio.gather(*(client.post("/v1/predict", files=files) for _ in range(3)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 200 and statuses[-1] == 503
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "overloaded" and "queued" in refused.json()["error"]


async def test_two_engine_threads_run_batches_side_by_side(model: LoadedModel) -> None:
    batcher, metrics = make_batcher(model, max_batch_images=2, concurrent_batches=2, max_delay_seconds=0.0)
    digits = (0, 1, 2, 3, 4, 6, 7, 8)
    results = await asyncio.gather(*(batcher.submit(digit(d), 3, d % 2 == 0) for d in digits))
    await batcher.close()
    assert [r.summary.class_index.item() for r in results] == list(digits)
    assert sample(metrics, "defended_batch_requests_sum", model) == len(digits)
    assert sample(metrics, "defended_batch_requests_count", model) >= len(digits) / 2


async def test_a_free_thread_takes_only_its_share_while_another_is_busy(model: LoadedModel) -> None:
    batcher, _ = make_batcher(model, max_batch_images=64, concurrent_batches=2, max_delay_seconds=0.0)
    busy = asyncio.get_running_loop().create_future()  # stands for a call running on the other thread
    batcher._running.add(busy)
    for d in range(8):
        batcher._queue.append(_Request(digit(d), 1, False, asyncio.get_running_loop().create_future()))
        batcher._queued_images += 1
    assert len(batcher._take_batch()) == 4, "half the queue: the rest waits for the busy thread"
    assert len(batcher._take_batch()) == 2
    busy.cancel()
