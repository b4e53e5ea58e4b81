"""Locust user for `make bench`: each user posts one example digit (JSON, base64) per request, back to back (or at a
constant rate when BENCH_RATE_PER_USER is set, for the latency-at-half-load run)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from locust import constant, constant_throughput, task
from locust.contrib.fasthttp import FastHttpUser

IMAGE = (Path(__file__).resolve().parent.parent / "examples" / "digit-7.png").read_bytes()
BODY = json.dumps({"instances": [base64.b64encode(IMAGE).decode()]})
HEADERS = {"content-type": "application/json"}
PATH = os.environ.get("BENCH_PATH", "/v1/predict")
RATE = float(os.environ.get("BENCH_RATE_PER_USER", "0"))


class SingleImageClient(FastHttpUser):
    wait_time = constant_throughput(RATE) if RATE > 0 else constant(0)

    @task
    def predict(self) -> None:
        self.client.post(PATH, data=BODY, headers=HEADERS)
