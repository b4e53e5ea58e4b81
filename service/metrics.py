"""Prometheus metrics: traffic, latency, engine load and the robustness signals behind the Grafana dashboard.

Each app owns its own `CollectorRegistry`, so several apps (tests, reloads) never collide on names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

PREFIX = "defended"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SHARE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class ServiceMetrics:
    def __init__(self) -> None:
        # NOTE: `_created` series double the exposition size and no dashboard of ours reads them.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        r = self.registry
        # NOTE: process CPU and memory feed the dashboard's utilisation panels where no cAdvisor is scraped.
        ProcessCollector(registry=r)
        self.requests = Counter(
            f"{PREFIX}_http_requests_total",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time from request received to response sent.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.engine_batch = Histogram(
            f"{PREFIX}_engine_batch_images",
            "Images per engine call (each runs images x samples rows).",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.engine_latency = Histogram(
            f"{PREFIX}_engine_duration_seconds",
            "Wall time of one engine (onnxruntime) call.",
            ["model", "version", "graph"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            f"{PREFIX}_images_total",
            "Images classified.",
            ["model", "version"],
            registry=r,
        )
        self.agreement = Histogram(
            f"{PREFIX}_ensemble_agreement",
            "Share of the N noisy passes that vote for the ensemble's answer.",
            ["model", "version"],
            buckets=SHARE_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            f"{PREFIX}_predictions_total",
            "Answers by predicted class; a sudden skew can signal an attack.",
            ["model", "version", "label"],
            registry=r,
        )
        self.flagged = Counter(
            f"{PREFIX}_flagged_total",
            "Inputs flagged as adversarial, by reason (`any` counts each input once).",
            ["model", "version", "reason"],
            registry=r,
        )
        self.reconstruction_z = Histogram(
            f"{PREFIX}_reconstruction_zscore",
            "z-score of the input's reconstruction error under the purifier.",
            ["model", "version"],
            buckets=(-2, -1, 0, 1, 2, 3, 5, 10, 20, 50, 100),
            registry=r,
        )
        self.changed_label = Counter(
            f"{PREFIX}_purification_changed_label_total",
            "Inputs whose answer purification changed.",
            ["model", "version"],
            registry=r,
        )
        self.purification_skipped = Counter(
            f"{PREFIX}_purification_skipped_total",
            "Inputs that skipped the purification steps (adaptive compute: reconstruction z at or below "
            "the skip threshold).",
            ["model", "version"],
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time a request waited in its model's batching queue before its engine call started.",
            ["model", "version"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.queue_length = Gauge(
            f"{PREFIX}_queue_length",
            "Requests waiting in the model's batching queue.",
            ["model", "version"],
            registry=r,
        )
        self.queue_rejected = Counter(
            f"{PREFIX}_queue_rejected_total",
            "Requests refused with 503 because the model's queue was full.",
            ["model", "version"],
            registry=r,
        )
        self.batch_requests = Histogram(
            f"{PREFIX}_batch_requests",
            "Requests merged into one engine call.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_dropped = Counter(
            f"{PREFIX}_queue_dropped_total",
            "Requests dropped from the queue before their engine call: the client went away or the "
            "request's deadline passed.",
            ["model", "version"],
            registry=r,
        )
        self.client_requests = Counter(
            f"{PREFIX}_client_requests_total",
            "Requests by client (API key id, or peer address without authentication; `other` past the cap).",
            ["client"],
            registry=r,
        )
        self.client_rejected = Counter(
            f"{PREFIX}_client_rejected_total",
            "Requests refused before reaching the service, by client and reason (unauthorized, forbidden, "
            "rate_limited).",
            ["client", "reason"],
            registry=r,
        )
        self.client_flagged = Counter(
            f"{PREFIX}_client_flagged_total",
            "Inputs flagged as adversarial, by client: with client_requests_total, a client's flag rate.",
            ["client"],
            registry=r,
        )
        self.model_info = Gauge(
            f"{PREFIX}_model_info",
            "Loaded model bundles (value 1), with their provider and ensemble size.",
            ["model", "version", "provider", "default_samples"],
            registry=r,
        )
        self.model_loads = Counter(
            f"{PREFIX}_model_loads_total",
            "Bundle versions loaded, refused (manifest, hash check, sessions, warm-up), replaced by a reload of "
            "the same version, and unloaded.",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.flag_rate_baseline = Gauge(
            f"{PREFIX}_flag_rate_baseline",
            "Share of clean held-out inputs the flag fires on (the bundle's measured false-positive rate); "
            "the flagged-rate alert compares live traffic with it.",
            ["model", "version"],
            registry=r,
        )

    def observe_predictions(
        self,
        model: str,
        version: str,
        labels: Sequence[str],
        agreement: np.ndarray,
        reasons: Sequence[list[str]],
    ) -> None:
        self.images.labels(model, version).inc(len(labels))
        for label, share, fired in zip(labels, agreement, reasons, strict=True):
            self.predictions.labels(model, version, label).inc()
            self.agreement.labels(model, version).observe(float(share))
            for reason in fired:
                self.flagged.labels(model, version, reason).inc()
            if fired:
                self.flagged.labels(model, version, "any").inc()

    def observe_purification(
        self, model: str, version: str, zscores: np.ndarray, changed: np.ndarray, skipped: np.ndarray
    ) -> None:
        for z in zscores:
            self.reconstruction_z.labels(model, version).observe(float(z))
        self.changed_label.labels(model, version).inc(int(np.count_nonzero(changed)))
        self.purification_skipped.labels(model, version).inc(int(np.count_nonzero(skipped)))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
