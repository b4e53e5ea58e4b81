"""Every bad-input and overload case against the real app, with the answer observed, as a Markdown table
for docs/RELIABILITY.md.

    python -m bench.cases --out reports/reliability/cases.md
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
PNG = (ROOT / "examples" / "digit-1.png").read_bytes()
ZEROS = np.zeros((28, 28)).tolist()
KEY = "example-client-key"


def _bomb() -> bytes:
    """A small PNG that declares 20000 x 20000 pixels (1-bit, compresses to almost nothing)."""
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


Case = tuple[str, Callable[[TestClient], httpx.Response]]
CASES: list[Case] = [
    ("malformed JSON", lambda c: c.post("/v1/predict", content=b'{"instances": [', headers={"content-type": "application/json"})),
    ("JSON nested 100,000 deep", lambda c: c.post("/v1/predict", content=b"[" * 100_000, headers={"content-type": "application/json"})),
    ("wrong content type", lambda c: c.post("/v1/predict", content=b"x", headers={"content-type": "text/plain"})),
    ("no instances", lambda c: c.post("/v1/predict", json={"instances": []})),
    ("unknown field (a noise seed)", lambda c: c.post("/v1/predict", json={"instances": [ZEROS], "seed": 1})),
    ("not an image", lambda c: c.post("/v1/predict", json={"instances": [_b64(b"GIF89a no")]})),
    ("truncated PNG", lambda c: c.post("/v1/predict", json={"instances": [_b64(PNG[:40])]})),
    ("invalid base64", lambda c: c.post("/v1/predict", json={"instances": ["!!"]})),
    ("decompression bomb (20000 x 20000 PNG)", lambda c: c.post("/v1/predict", files={"files": ("b.png", _bomb(), "image/png")})),
    ("array of the wrong shape", lambda c: c.post("/v1/predict", json={"instances": [np.zeros((28, 27)).tolist()]})),
    ("values outside [0, 1]", lambda c: c.post("/v1/predict", json={"instances": [np.full((28, 28), 255.0).tolist()]})),
    ("NaN in an array", lambda c: c.post("/v1/predict", content=json.dumps({"instances": [[[float("nan")] * 28] * 28]}).encode(), headers={"content-type": "application/json"})),
    ("samples = 65 (max 64)", lambda c: c.post("/v1/predict", json={"instances": [ZEROS], "samples": 65})),
    ("65 instances (max 64)", lambda c: c.post("/v1/predict", json={"instances": [ZEROS] * 65})),
    ("body over 8 MiB", lambda c: c.post("/v1/predict", content=b" " * (8 * 2**20 + 1), headers={"content-type": "application/json"})),
    ("unknown model", lambda c: c.post("/v1/models/nope/predict", json={"instances": [ZEROS]})),
]  # fmt: skip


def _row(name: str, response: httpx.Response) -> str:
    body = response.json()
    extra = f" (Retry-After: {response.headers['retry-after']})" if "retry-after" in response.headers else ""
    error = body["error"].replace("|", "\\|")
    return f"| {name} | {response.status_code}{extra} | `{body['code']}` | {error[:140]} |"


def _concurrent(app, count: int, **body) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await asyncio.gather(*(client.post("/v1/predict", json=body) for _ in range(count)))

    return asyncio.run(run())


def observed_rows() -> list[str]:
    rows = []
    with TestClient(create_app(Settings(model_repository=REPOSITORY))) as client:
        rows += [_row(name, call(client)) for name, call in CASES]
    with TestClient(create_app(Settings(model_repository=REPOSITORY, api_keys=[KEY]))) as client:
        rows.append(
            _row("no API key (keys configured)", client.post("/v1/predict", json={"instances": [ZEROS]}))
        )
        wrong = client.post("/v1/predict", json={"instances": [ZEROS]}, headers={"X-API-Key": "guess"})
        rows.append(_row("wrong API key", wrong))
        admin = client.post("/v2/repository/index", headers={"X-API-Key": KEY})
        rows.append(_row("client key on an admin route", admin))
    with TestClient(
        create_app(Settings(model_repository=REPOSITORY, rate_limit_per_second=1, rate_limit_burst=1))
    ) as client:
        client.post("/v1/predict", json={"instances": [ZEROS]})
        rows.append(
            _row(
                "over the per-client rate (1/s, burst 1)",
                client.post("/v1/predict", json={"instances": [ZEROS]}),
            )
        )
    noise = np.random.default_rng(0).random((8, 28, 28)).tolist()
    with TestClient(
        create_app(Settings(model_repository=REPOSITORY, request_timeout_seconds=0.001))
    ) as client:
        rows.append(
            _row("deadline passed (timeout 1 ms)", client.post("/v1/predict", json={"instances": noise}))
        )
    full = _concurrent(
        create_app(Settings(model_repository=REPOSITORY, max_queue_images=1, max_queue_delay_ms=300)),
        3,
        instances=[ZEROS],
    )
    refused = next(r for r in full if r.status_code == 503)
    rows.append(_row("queue full (bound 1 image, 3 concurrent requests)", refused))
    return rows  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("reports/reliability/cases.md"))
    args = parser.parse_args(argv)
    lines = ["| case | status | code | error (as returned) |", "| --- | --- | --- | --- |", *observed_rows()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
