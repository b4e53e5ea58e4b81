"""Locust user for `make bench` and `make soak`: each user posts one clean image (JSON, base64) per request,
cycling through the PNG files in BENCH_IMAGES (the bench writes test images of the benched bundle there;
examples/digit-*.png when unset), back to back (or at a constant rate when BENCH_RATE_PER_USER is set). Some
of these images are skipped by adaptive compute and some are purified.

With SOAK_EXPECTED (the engine's labels for the examples, JSON) and SOAK_TALLY (a file), every answer is
sorted into correct / wrong / refused (503, 429) / lost (anything else, timeouts included), and the tally
with the accepted requests' latencies is written when the run stops.
"""

from __future__ import annotations

import base64
import json
import os
import random
from pathlib import Path

import gevent
from locust import constant, constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpUser

IMAGES = os.environ.get("BENCH_IMAGES")
EXAMPLES = (
    sorted(Path(IMAGES).glob("*.png"))
    if IMAGES
    else sorted((Path(__file__).resolve().parent.parent / "examples").glob("digit-*.png"))
)
BODIES = [json.dumps({"instances": [base64.b64encode(path.read_bytes()).decode()]}) for path in EXAMPLES]
EXPECTED = json.loads(os.environ.get("SOAK_EXPECTED", "null"))
TALLY_FILE = os.environ.get("SOAK_TALLY")
TALLY = {"correct": 0, "wrong": 0, "refused": 0, "lost": 0, "accepted_latency_ms": []}
HEADERS = {"content-type": "application/json"}
PATH = os.environ.get("BENCH_PATH", "/v1/predict")
RATE = float(os.environ.get("BENCH_RATE_PER_USER", "0"))


class SingleImageClient(FastHttpUser):
    wait_time = constant_throughput(RATE) if RATE > 0 else constant(0)
    sent = 0

    def on_start(self) -> None:
        # NOTE: each user starts at its own place in the image cycle. Starting all at the first image
        # would have every user send the same image in the same interval: with adaptive compute, waves of
        # all-purified then all-skipped traffic instead of the mix the service sees from independent clients.
        self.sent = random.randrange(len(BODIES))
        if RATE > 0:
            # NOTE: at a set rate each user starts at a random point of its interval. Locust starts users
            # in groups of floor(spawn rate) at once, so without this the users of a group would send their
            # requests in the same instant, every interval: bursts that measure the burst's queueing
            # instead of the latency at that rate.
            gevent.sleep(random.uniform(0, 1 / RATE))

    @task
    def predict(self) -> None:
        self.sent += 1
        index = self.sent % len(BODIES)
        if EXPECTED is None:
            self.client.post(PATH, data=BODIES[index], headers=HEADERS)
            return
        with self.client.post(PATH, data=BODIES[index], headers=HEADERS, catch_response=True) as response:
            if response.status_code == 200:
                label = response.json()["predictions"][0]["label"]
                TALLY["correct" if label == EXPECTED[index] else "wrong"] += 1
                TALLY["accepted_latency_ms"].append(response.request_meta["response_time"])
            elif response.status_code in (429, 503):
                TALLY["refused"] += 1
                response.success()  # refusing is the backpressure working, not a failure
            else:
                TALLY["lost"] += 1


@events.test_stop.add_listener
def _write_tally(**_: object) -> None:
    if TALLY_FILE:
        Path(TALLY_FILE).write_text(json.dumps(TALLY))
