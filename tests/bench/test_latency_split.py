"""The latency split reads the service's histograms the way Prometheus exposes them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.latency_split import histogram_means


def test_means_pool_every_label_set_and_ignore_other_metrics() -> None:
    registry = CollectorRegistry()
    handler = Histogram("defended_http_request_duration_seconds", "", ["route"], registry=registry)
    queue = Histogram("defended_queue_wait_seconds", "", registry=registry)
    Histogram("defended_other_seconds", "", registry=registry).observe(100.0)
    for route, seconds in (("/a", 0.2), ("/a", 0.4), ("/b", 0.9)):
        handler.labels(route).observe(seconds)
    queue.observe(0.05)
    means = histogram_means(generate_latest(registry).decode())
    assert means["http_handler"] == 0.5
    assert means["queue_wait"] == 0.05
    assert means["engine_call"] == 0.0  # not exposed: no observations
