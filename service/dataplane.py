"""The data plane: decode -> ensemble -> scores and flags -> response, independent of any transport.

REST handlers only parse the transport and call in here. Engine calls run on a small dedicated thread pool
(onnxruntime releases the GIL), so the event loop keeps answering health checks while a batch runs and the
cores are not oversubscribed by many concurrent sessions.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from service.codecs import decode_image, decode_instance, encode_png
from service.errors import InvalidInput, NotReady, PayloadTooLarge
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
        self._executor = ThreadPoolExecutor(settings.engine_workers, thread_name_prefix="engine")

    def close(self) -> None:
        self.ready = False
        self._executor.shutdown(wait=True)

    # --- lookup -------------------------------------------------------------------------------------------
    def model(self, name: str | None, version: str | None = None) -> LoadedModel:
        """The model to run a request on; the caller holds it to the end, so a swap never cuts it short."""
        if not self.ready:
            raise NotReady("models are still loading")
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
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, model.run, images, samples, purify)
        for graph, seconds in result.seconds.items():
            self.metrics.engine_latency.labels(name, version, graph).observe(seconds)
        self.metrics.engine_batch.labels(name, version).observe(len(images))

        summary, scores = result.summary, result.scores
        thresholds = model.manifest.calibration.thresholds
        reasons = flag_reasons(scores, thresholds)
        classes = model.manifest.classes
        labels = [classes[i] for i in summary.class_index]
        self.metrics.observe_predictions(name, version, labels, summary.agreement, reasons)
        purification = result.purification
        if purification is not None:
            self.metrics.observe_purification(
                name, version, scores[RECONSTRUCTION], purification.changed_label
            )
        ref = ModelRef(name=name, version=version)
        steps = model.manifest.purifier.steps if model.manifest.purifier else 0
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
                    steps=steps,
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
            rse={"sigma_init": manifest.rse.sigma_init, "sigma_inner": manifest.rse.sigma_inner},
            purifier=manifest.purifier.model_dump() if manifest.purifier else None,
            provider=model.engine.provider,
            calibration=manifest.calibration.model_dump(),
            metrics=manifest.metrics.model_dump(),
        )

    def list_models(self) -> ModelList:
        return ModelList(
            models=[self.model_info(model) for model in self.registry.models()],
            failed=dict(self.registry.failures),
        )
