"""The data plane: decode -> ensemble -> scores and flags -> response, independent of any transport.

REST handlers only parse the transport and call in here. Requests go through one `Batcher` per model
version, which merges concurrent requests into engine calls; those run on a small dedicated thread pool
(onnxruntime releases the GIL), so the event loop keeps answering health checks while a batch runs and the
cores are not oversubscribed by many concurrent sessions.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from service import requestctx
from service.batching import Batcher, BatchingConfig
from service.codecs import decode_image, decode_instance, encode_png
from service.errors import InvalidInput, NotReady, PayloadTooLarge, RequestTimeout
from service.metrics import ServiceMetrics
from service.registry import LoadedModel, ModelRegistry
from service.schemas import (
    EnsembleInfo,
    Flags,
    InputInfo,
    ModelInfo,
    ModelList,
    ModelRef,
    Prediction,
    PurificationInfo,
)
from service.scoring import RECONSTRUCTION, flag_reasons
from service.settings import Settings

log = logging.getLogger(__name__)


class DataPlane:
    def __init__(self, settings: Settings, registry: ModelRegistry, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.ready = False
        workers = settings.engine_threads()
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="engine")
        self._batching = BatchingConfig(
            merge=settings.batching,
            max_batch_images=settings.max_batch_images,
            max_delay_seconds=settings.max_queue_delay_ms / 1000,
            max_queue_images=settings.max_queue_images,
            concurrent_batches=workers,
        )
        # NOTE: weak keys: a replaced model version (live reload) takes its queue with it once its last
        # request is done, instead of being kept alive here.
        self._batchers: weakref.WeakKeyDictionary[LoadedModel, Batcher] = weakref.WeakKeyDictionary()

    def batcher(self, model: LoadedModel) -> Batcher:
        """The queue of this loaded model version (made on first use, inside the event loop)."""
        batcher = self._batchers.get(model)
        if batcher is None:
            batcher = self._batchers[model] = Batcher(model, self._executor, self._batching, self.metrics)
        return batcher

    def start_draining(self) -> None:
        """Shutdown has begun: readiness fails and new requests are refused; accepted ones carry on."""
        self.ready = False
        self.draining = True

    async def close(self) -> None:
        """Stop taking requests, finish the queued ones, then release the engine threads."""
        self.ready = False
        await asyncio.gather(*(batcher.close() for batcher in list(self._batchers.values())))
        self._executor.shutdown(wait=True)

    # --- lookup -------------------------------------------------------------------------------------------
    def model(self, name: str | None, version: str | None = None) -> LoadedModel:
        """The model to run a request on; the caller holds it to the end, so a swap never cuts it short."""
        if not self.ready:
            raise NotReady("the service is shutting down" if self.draining else "models are still loading")
        return self.registry.get(name or self.settings.default_model, version)

    @staticmethod
    def resolve_purify(model: LoadedModel, purify: bool | None) -> bool:
        if purify and model.purifier is None:
            raise InvalidInput(
                f"model '{model.name}' has no purifier; send purify=false or leave it out", field="purify"
            )
        return model.purifier is not None if purify is None else purify

    @staticmethod
    def resolve_samples(model: LoadedModel, samples: int | None) -> int:
        rse = model.manifest.rse
        if samples is None:
            return rse.default_samples
        if not 1 <= samples <= rse.max_samples:
            raise InvalidInput(
                f"samples must be between 1 and {rse.max_samples} for model '{model.name}', got {samples}",
                field="samples",
            )
        return samples

    # --- decode -------------------------------------------------------------------------------------------
    def check_count(self, count: int) -> None:
        if count == 0:
            raise InvalidInput("no instances in the request")
        if count > self.settings.max_instances:
            raise PayloadTooLarge(
                f"{count} instances in one request; the limit is {self.settings.max_instances}",
                limit=self.settings.max_instances,
            )

    async def decode_instances(self, model: LoadedModel, instances: list[Any]) -> np.ndarray:
        self.check_count(len(instances))
        spec, max_pixels = model.manifest.input, self.settings.max_image_pixels

        def decode() -> np.ndarray:
            return np.stack(
                [
                    decode_instance(item, spec, max_pixels=max_pixels, index=i)
                    for i, item in enumerate(instances)
                ]
            )

        return await asyncio.to_thread(decode)

    async def decode_files(self, model: LoadedModel, payloads: list[bytes]) -> np.ndarray:
        self.check_count(len(payloads))
        spec, max_pixels = model.manifest.input, self.settings.max_image_pixels

        def decode() -> np.ndarray:
            return np.stack(
                [decode_image(data, spec, max_pixels=max_pixels, index=i) for i, data in enumerate(payloads)]
            )

        return await asyncio.to_thread(decode)

    # --- infer + encode -----------------------------------------------------------------------------------
    async def predict(
        self,
        model: LoadedModel,
        images: np.ndarray,
        samples: int,
        purify: bool,
        return_purified: bool = False,
    ) -> list[Prediction]:
        name, version = model.name, model.version
        try:
            # NOTE: on timeout the waiting submit is cancelled, which cancels its queue entry: a request
            # still queued then never reaches the engine.
            result = await asyncio.wait_for(
                self.batcher(model).submit(images, samples, purify), self.settings.request_timeout_seconds
            )
        except TimeoutError:
            raise RequestTimeout(
                f"no answer within {self.settings.request_timeout_seconds:g}s; the service is overloaded"
            ) from None

        summary, scores = result.summary, result.scores
        thresholds = model.manifest.calibration.thresholds
        reasons = flag_reasons(scores, thresholds)
        classes = model.manifest.classes
        labels = [classes[i] for i in summary.class_index]
        self.metrics.observe_predictions(name, version, labels, summary.agreement, reasons)
        flagged = [r for r in reasons if r]
        requestctx.note(
            model=name, version=version, images=len(images), flagged=len(flagged),
            flag_reasons=sorted({reason for fired in flagged for reason in fired}),
        )  # fmt: skip
        context = requestctx.current()
        if context is not None and flagged:
            self.metrics.client_flagged.labels(context.client_label).inc(len(flagged))
        purification = result.purification
        if purification is not None:
            self.metrics.observe_purification(
                name, version, scores[RECONSTRUCTION], purification.changed_label, purification.skipped
            )
        ref = ModelRef(name=name, version=version)
        return [
            Prediction(
                label=labels[i],
                class_index=int(summary.class_index[i]),
                confidence=float(summary.confidence[i]),
                probabilities={
                    cls: float(p) for cls, p in zip(classes, summary.mean_probabilities[i], strict=True)
                },
                ensemble=EnsembleInfo(
                    samples=samples, agreement=float(summary.agreement[i]), entropy=float(summary.entropy[i])
                ),
                flags=Flags(
                    adversarial=bool(reasons[i]),
                    reasons=reasons[i],
                    scores={key: float(values[i]) for key, values in scores.items()},
                    thresholds=dict(thresholds),
                ),
                purification=None
                if purification is None
                else PurificationInfo(
                    steps=int(purification.steps[i]),
                    reconstruction_error_before=float(purification.error_before[i]),
                    reconstruction_error_after=float(purification.error_after[i]),
                    changed_label=bool(purification.changed_label[i]),
                    purified_image=encode_png(purification.purified[i], model.manifest.input)
                    if return_purified
                    else None,
                ),
                model=ref,
            )
            for i in range(len(images))
        ]

    # --- metadata -----------------------------------------------------------------------------------------
    def model_info(self, model: LoadedModel) -> ModelInfo:
        manifest = model.manifest
        return ModelInfo(
            name=manifest.name,
            version=manifest.version,
            description=manifest.description,
            default=manifest.name == self.settings.default_model,
            input=InputInfo(
                shape=list(manifest.input.shape),
                dtype=manifest.input.dtype,
                value_range=manifest.input.value_range,
                color_mode=manifest.input.color_mode,
            ),
            classes=manifest.classes,
            samples={"default": manifest.rse.default_samples, "max": manifest.rse.max_samples},
            rse={
                "sigma_init": manifest.rse.sigma_init,
                "sigma_inner": manifest.rse.sigma_inner,
                "mirrored_passes": manifest.rse.mirrored_passes,
            },
            purifier=manifest.purifier.model_dump() if manifest.purifier else None,
            defense=manifest.defense.model_dump() if manifest.defense else None,
            provider=model.engine.provider,
            precision=model.precision,
            calibration=manifest.calibration.model_dump(),
            metrics=manifest.metrics.model_dump(),
        )

    def list_models(self) -> ModelList:
        return ModelList(
            models=[self.model_info(model) for model in self.registry.models()],
            failed=dict(self.registry.failures),
        )
