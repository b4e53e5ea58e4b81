"""Classify images through the Open Inference Protocol with NVIDIA's own client, `tritonclient[http]`:
binary tensors in and out, the classification extension, and the service's options as request parameters.

    .venv/bin/python examples/triton_client.py [--url 127.0.0.1:8000] [--samples 16] [image.png ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from PIL import Image

MODEL = "mnist-rse-apudae"
HERE = Path(__file__).resolve().parent
DEFAULT_IMAGES = [HERE / "digit-7.png", HERE / "adversarial-pgd-digit-3.png"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="*", type=Path, default=DEFAULT_IMAGES, help="28x28 greyscale images")
    parser.add_argument("--url", default="127.0.0.1:8000", help="host:port of the service (no scheme)")
    parser.add_argument("--samples", type=int, default=16, help="ensemble size N")
    args = parser.parse_args(argv)

    with httpclient.InferenceServerClient(args.url) as client:
        metadata = client.get_model_metadata(MODEL)
        print(f"{MODEL} ready: {client.is_model_ready(MODEL)}, versions {metadata['versions']}")
        pixels = np.stack([np.asarray(Image.open(path).convert("L"))[None] for path in args.images])
        images = httpclient.InferInput("images", list(pixels.shape), "UINT8")
        images.set_data_from_numpy(pixels)  # sent as binary data after the JSON header
        outputs = [
            httpclient.InferRequestedOutput("probabilities", class_count=3),
            *(
                httpclient.InferRequestedOutput(name)
                for name in ("label", "adversarial", "adversarial_score", "agreement", "reconstruction_z")
            ),
        ]
        result = client.infer(MODEL, [images], outputs=outputs, parameters={"samples": args.samples})
    print(f"answered by version {result.get_response()['model_version']} with N = {args.samples}")
    for i, path in enumerate(args.images):
        top3 = ", ".join(entry.decode() for entry in result.as_numpy("probabilities")[i])
        print(
            f"{path.name}: label {result.as_numpy('label')[i].decode()}, top-3 [{top3}], "
            f"adversarial {result.as_numpy('adversarial')[i]} "
            f"(score {result.as_numpy('adversarial_score')[i]:.3f}, "
            f"agreement {result.as_numpy('agreement')[i]:.2f}, "
            f"reconstruction z {result.as_numpy('reconstruction_z')[i]:.2f})"
        )


if __name__ == "__main__":
    main()
