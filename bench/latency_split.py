"""Where a request's time goes under a set load: locust's latency beside the service's own histograms.

    python -m bench.latency_split --users 64 --rate 53        # 64 users sending 53 requests/s in all

The bench's half-load row showed a median latency far above one request's cost with the engine half idle.
This runs the same load against a fresh service and reads its Prometheus histograms afterwards: the mean
time a request spent in the HTTP handler and queued for the engine, the mean engine call (one graph; a
batch makes one to three) and the mean requests per batch, beside what locust measured.
"""

from __future__ import annotations

import argparse
import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench import measure

HISTOGRAMS = {
    "http_handler": "defended_http_request_duration_seconds",
    "queue_wait": "defended_queue_wait_seconds",
    "engine_call": "defended_engine_duration_seconds",
    "requests_per_engine_batch": "defended_batch_requests",
}


def histogram_means(metrics_text: str) -> dict[str, float]:
    """Mean of each histogram in HISTOGRAMS over all its label sets (sum of sums / sum of counts)."""
    totals: dict[str, list[float]] = {name: [0.0, 0.0] for name in HISTOGRAMS.values()}
    for family in text_string_to_metric_families(metrics_text):
        if family.name not in totals:
            continue
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                totals[family.name][0] += sample.value
            elif sample.name.endswith("_count"):
                totals[family.name][1] += sample.value
    return {key: totals[name][0] / max(totals[name][1], 1.0) for key, name in HISTOGRAMS.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--rate", type=float, required=True, help="requests per second, all users together")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--path", default="/v1/predict")
    args = parser.parse_args(argv)
    with measure.running_service(batching="true") as service:
        run = measure.locust_run(service.url, args.users, args.seconds, args.path, args.rate / args.users)
        means = histogram_means(httpx.get(f"{service.url}/metrics").text)
    print(json.dumps({"locust": run, "service_means": means}, indent=2))


if __name__ == "__main__":
    main()
