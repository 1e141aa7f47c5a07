"""What an existing Ray cluster costs and saves: a sweep dispatched to it against local processes, and Flower's
simulation engine on it against the Ray it otherwise starts per run.

A two-node cluster on loopback (Ray's `cluster_utils.Cluster`: a head and a second raylet, 1 CPU each, as
`ray start --head` and `ray start --address` make), the quickstart on the tiny random backbone (2 rounds, 4
clients, 2 per round), every figure the wall time of one `fedsim` command in a fresh process:

    .venv/bin/python benchmarks/ray_cluster.py [--points 4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.backbone=tiny-random", "rounds=2", "clients.num_clients=4", "clients.per_round=2",
    "train.local_steps=4", "data.eval_samples=32", "data.eval_full_final=false",
]  # fmt: skip


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=4, help="sweep points (fixed ranks 1, 2, ...)")
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    work = Path(tempfile.mkdtemp(prefix="ray-cluster-"))
    sets = "".join(f"  {s.split('=')[0]}: {s.split('=')[1]}\n" for s in TINY)
    sweep = work / "sweep.yaml"
    sweep.write_text(f"base: {ROOT / 'scenarios' / 'quickstart.yaml'}\nset:\n{sets}grid:\n  policy.rank: {list(range(1, args.points + 1))}\nseeds: [0]\n")
    fedsim = [sys.executable, "-m", "fedsim.cli"]

    start = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    up = time.perf_counter() - start
    try:
        figures = {
            f"sweep of {args.points}, local processes (--workers 2)": timed(
                [*fedsim, "sweep", str(sweep), "--out", str(work / "local"), "--workers", "2", "--no-progress"]
            ),
            f"sweep of {args.points}, on the cluster (--ray-address)": timed(
                [*fedsim, "sweep", str(sweep), "--out", str(work / "ray"), "--workers", "2", "--no-progress", "--ray-address", cluster.address]
            ),
            "one run, engine flower (starts its own Ray)": timed(
                [*fedsim, "run", "scenarios/quickstart.yaml", "--no-progress", "--out", str(work / "own"), *[a for s in TINY for a in ("--set", s)]]
            ),
            "one run, engine flower on the cluster (ray_address)": timed(
                [
                    *fedsim,
                    "run",
                    "scenarios/quickstart.yaml",
                    "--no-progress",
                    "--out",
                    str(work / "attached"),
                    "--set",
                    f"ray_address={cluster.address}",
                    "--set",
                    "threads=1",
                    *[a for s in TINY for a in ("--set", s)],
                ]
            ),  # fmt: skip
        }
    finally:
        cluster.shutdown()
    print(f"two-node loopback cluster up in {up:.1f} s")
    for label, seconds in figures.items():
        print(f"{label:55s} {seconds:6.1f} s")


if __name__ == "__main__":
    main()
