"""Start-up and first-round time against the population, on the inline and Flower simulation engines.

One process per measurement (`fedsim run`, 2 rounds, 20 clients per round, the tiny random backbone so that
the population's cost is what shows), reporting the wall time of the whole command, the time of each
round from timings.csv, and the peak RSS of the process tree (children included: Ray's workers).

    .venv/bin/python benchmarks/startup.py --populations 100 1000 10000 --engines inline flower
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def measure(population: int, engine: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"startup-{engine}-{population}-"))
    command = [
        sys.executable, "-m", "fedsim.cli", "run", "scenarios/quickstart.yaml", "--no-progress", "--overwrite", "--out", str(out / "run"),
        "--set", f"engine={engine}", "--set", "rounds=2", "--set", "model.backbone=tiny-random",
        "--set", f"clients.num_clients={population}", "--set", "clients.per_round=20", "--set", "data.eval_samples=64",
        "--set", "data.eval_full_final=false", "--set", "data.partition.min_examples=1", "--set", "train.local_steps=2",
    ]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        try:
            tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        return {"population": population, "engine": engine, "error": process.stderr.read().strip().splitlines()[-1:]}
    with open(out / "run" / "timings.csv", newline="") as fh:
        rounds = [float(row["wall_s"]) for row in csv.DictReader(fh)]
    return {"population": population, "engine": engine, "wall_s": wall, "round_s": rounds, "peak_rss_gib": peak / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--populations", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--engines", nargs="+", default=["inline", "flower"])
    args = parser.parse_args()
    print("| engine | clients | command wall s | round 1 s | round 2 s | peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    for engine in args.engines:
        for population in args.populations:
            r = measure(population, engine)
            if "error" in r:
                print(f"| {engine} | {population:,} | failed: {r['error']} | | | |", flush=True)
                continue
            print(f"| {engine} | {population:,} | {r['wall_s']:.1f} | {r['round_s'][0]:.2f} | {r['round_s'][1]:.2f} | {r['peak_rss_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
