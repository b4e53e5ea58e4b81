"""`make soak`: the service under more load than it can take, for a few minutes, on loopback.

    python -m bench.soak --seconds 180 --users 96 --out reports/soak

Reports requests accepted vs refused (503/429 are the backpressure working), accepted requests lost (any
other outcome, timeouts included) or answered wrongly (label differs from the engine's own answer for that
image, computed in-process first with N = 64), memory before and after (RSS), and the accepted requests'
latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import measure
from export.bundle import invoking_command
from service.registry import LoadOptions, load_bundle
from service.runtime import choose_providers

log = logging.getLogger("bench.soak")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def engine_labels(bundle: Path) -> list[str]:
    """The engine's answer for each example digit, in the locustfile's order."""
    model = load_bundle(bundle, LoadOptions(choose_providers("cpu"), warmup=False))
    paths = sorted(EXAMPLES.glob("digit-*.png"))
    images = np.stack([np.asarray(Image.open(p), dtype=np.float32)[None] / 255 for p in paths])
    result = model.run(images, samples=64, purify=True)
    return [model.manifest.classes[i] for i in result.summary.class_index]


def soak(args: argparse.Namespace) -> dict[str, Any]:
    expected = engine_labels(args.bundle)
    with (
        tempfile.TemporaryDirectory() as folder,
        measure.running_service(
            max_queue_images=str(args.max_queue_images), request_timeout_seconds="10"
        ) as service,
    ):
        tally_path = Path(folder) / "tally.json"
        measure.locust_run(service.url, 4, 5)  # warm the process before the baseline
        rss_before = service.rss_bytes()
        samples: list[float] = []
        stop = threading.Event()

        def sample_rss() -> None:
            while not stop.wait(5.0):
                samples.append(service.rss_bytes() / 2**20)

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        stats = measure.locust_run(
            service.url,
            args.users,
            args.seconds,
            extra_env={"SOAK_EXPECTED": json.dumps(expected), "SOAK_TALLY": str(tally_path)},
        )
        stop.set()
        sampler.join()
        rss_after = service.rss_bytes()
        tally = json.loads(tally_path.read_text())
    latencies = np.asarray(tally.pop("accepted_latency_ms"))
    accepted = tally["correct"] + tally["wrong"]
    return {
        "command": invoking_command(),
        "machine": {"cpu_cores": os.cpu_count(), "load_average_at_end": os.getloadavg()},
        "seconds": args.seconds,
        "users": args.users,
        "max_queue_images": args.max_queue_images,
        "sent": accepted + tally["refused"] + tally["lost"],
        "accepted": accepted,
        "refused": tally["refused"],
        "lost": tally["lost"],
        "wrong": tally["wrong"],
        "accepted_per_second": accepted / args.seconds,
        "accepted_latency_ms": {
            q: float(np.percentile(latencies, int(q[1:]))) for q in ("p50", "p95", "p99")
        } if len(latencies) else {},
        # NOTE: RSS rises once as onnxruntime's arena grows to the largest batch, then should stay flat:
        # the samples every 5 s show which.
        "rss_mib": {"before": rss_before / 2**20, "after": rss_after / 2**20, "every_5s": samples},
        "locust": stats,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("reports/soak"))
    parser.add_argument("--bundle", type=Path, default=Path("model_repository/mnist-rse-apudae/1"))
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--users", type=int, default=96, help="clients sending back to back (above capacity)")
    parser.add_argument("--max-queue-images", type=int, default=32, help="the service's queue bound")
    args = parser.parse_args(argv)
    results = soak(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log.info("soak: %s", {k: v for k, v in results.items() if k != "locust"})


if __name__ == "__main__":
    main()
