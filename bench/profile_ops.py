"""Where an engine call spends its time, by ONNX operator type (onnxruntime's own profiler).

python -m bench.profile_ops --graph ensemble --batch 32 --samples 10
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.manifest import load_manifest


def operator_shares(graph: Path, batch: int, samples: int, threads: int, calls: int = 6) -> dict[str, float]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as folder:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        shape = session.get_inputs()[0].shape
        feeds = {"images": np.random.default_rng(0).random((batch, *shape[1:]), dtype=np.float32)}
        if any(i.name == "samples" for i in session.get_inputs()):
            feeds["samples"] = np.asarray(samples, dtype=np.int64)
        for _ in range(calls):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    overall = sum(totals.values())
    return {op: time / overall for op, time in totals.most_common()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=Path("model_repository/mnist-rse-apudae/1"))
    parser.add_argument("--graph", default="ensemble", choices=["ensemble", "purifier", "screen"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    graph = args.bundle / load_manifest(args.bundle).graphs[args.graph].path
    for op, share in list(operator_shares(graph, args.batch, args.samples, args.threads).items())[:8]:
        print(f"{op:24s} {share:6.1%}")


if __name__ == "__main__":
    main()
