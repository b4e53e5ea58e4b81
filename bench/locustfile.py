"""Locust user for `make bench`: each user posts one clean example digit (JSON, base64) per request, cycling
through examples/digit-*.png, back to back (or at a constant rate when BENCH_RATE_PER_USER is set, for the
latency-at-half-load run). Some of these digits are skipped by adaptive compute and some are purified."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from locust import constant, constant_throughput, task
from locust.contrib.fasthttp import FastHttpUser

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BODIES = [
    json.dumps({"instances": [base64.b64encode(path.read_bytes()).decode()]})
    for path in sorted(EXAMPLES.glob("digit-*.png"))
]
HEADERS = {"content-type": "application/json"}
PATH = os.environ.get("BENCH_PATH", "/v1/predict")
RATE = float(os.environ.get("BENCH_RATE_PER_USER", "0"))


class SingleImageClient(FastHttpUser):
    wait_time = constant_throughput(RATE) if RATE > 0 else constant(0)
    sent = 0

    @task
    def predict(self) -> None:
        self.sent += 1
        self.client.post(PATH, data=BODIES[self.sent % len(BODIES)], headers=HEADERS)
