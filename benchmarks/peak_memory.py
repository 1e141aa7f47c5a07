"""Peak resident memory of a scenario run, summed over its whole process tree (Ray workers included).

    .venv/bin/python benchmarks/peak_memory.py scenarios/many_clients.yaml --rounds 3

It runs `fedsim run` as a child process, samples the RSS of the child and all its
descendants every 0.2 s, and prints the peak and the run's wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fedsim.cli", "run", args.scenario, "--out", f"{tmp}/run", "--no-progress", "--set", f"rounds={args.rounds}"]
        for item in args.overrides:
            cmd += ["--set", item]
        start = time.time()
        child = subprocess.Popen(cmd, cwd=ROOT)
        proc = psutil.Process(child.pid)
        peak = 0
        while child.poll() is None:
            peak = max(peak, tree_rss(proc))
            time.sleep(0.2)
        if child.returncode:
            sys.exit(f"run failed with exit code {child.returncode}")
        print(f"{args.scenario}: {args.rounds} rounds in {time.time() - start:.0f} s, peak RSS of the process tree {peak / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
