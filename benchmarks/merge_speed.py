"""The server's merge of one round (`fedsim.aggregation.aggregate`, svd, `average: updates`) at OPT-1.3B's
adapter shape: 48 adapted layers (q_proj and v_proj of 24 blocks) of 2048 x 2048, rank 8, 8 clients at
rank 8. Layers merged one after another against the threads of `merge_layers`, in the same run, and the
two results compared bit for bit.

    .venv/bin/python benchmarks/merge_speed.py                      # OPT-1.3B's shape
    .venv/bin/python benchmarks/merge_speed.py --layers 12 --width 384   # MiniLM's (the quickstart)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fedsim.aggregation as aggregation  # noqa: E402
from fedsim.adapter_state import AdapterState  # noqa: E402
from fedsim.types import run_script  # noqa: E402


def sequential(jobs, rng, parallel=True):
    return {i: job(rng) for i, job in jobs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.rank, args.width)
    glob = AdapterState(
        [rng.standard_normal(shape).astype(np.float32) for _ in range(args.layers)],
        [rng.standard_normal(shape[::-1]).astype(np.float32) * 0.01 for _ in range(args.layers)],
        {},
    )
    uploads = [
        {k: (rng.standard_normal(shape if k[0] == "A" else shape[::-1]) * 1e-3).astype(np.float32) for i in range(args.layers) for k in (f"A.{i}", f"B.{i}")}
        for _ in range(args.clients)
    ]
    weights = [1.0] * args.clients
    threaded = aggregation.merge_layers
    aggregation.aggregate(glob, uploads, weights, "svd", np.random.default_rng(1), average="updates")  # warm-up
    results, seconds = {}, {}
    for name, merge_layers in (("sequential", sequential), ("threads", threaded), ("sequential again", sequential), ("threads again", threaded)):
        aggregation.merge_layers = merge_layers
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            results[name] = aggregation.aggregate(glob, uploads, weights, "svd", np.random.default_rng(1), average="updates")
            times.append(time.perf_counter() - start)
        seconds[name] = float(np.median(times))
    aggregation.merge_layers = threaded
    same = all(
        np.array_equal(x, y)
        for x, y in zip(results["threads"].state.A + results["threads"].state.B, results["sequential"].state.A + results["sequential"].state.B)
    )
    print(f"{args.layers} layers of {args.width} x {args.width}, rank {args.rank}, {args.clients} clients; median of {args.repeats}:")
    for name, value in seconds.items():
        print(f"  {name:>17}: {value * 1000:7.1f} ms")
    ratio = (seconds["sequential"] + seconds["sequential again"]) / (seconds["threads"] + seconds["threads again"])
    print(f"  threads are {ratio:.2f}x faster; results identical to the bit: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    run_script(main, "merge_speed")
