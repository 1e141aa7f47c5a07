"""Wall time of one scenario on Flower's deployment engine (loopback) against the in-process inline engine.

    .venv/bin/python benchmarks/deploy_overhead.py [--rounds 6] [--clients 3]

Runs the same scenario (tiny backbone, one train message per client per round) four ways and prints
each one's wall time, its per-round times (timings.csv) and its per-round overhead over the inline
engine (median of rounds 2.., where every path is warm):

- inline: the ServerApp and ClientApp called in-process;
- deploy-local, warm (the default): each SuperNode in process-isolation mode beside a
  `fedsim-superexec` that keeps the ClientApp and its runtime loaded, polling every
  `default_poll_interval(clients)` seconds;
- deploy-local, warm with Flower's polling (`--poll-interval 3`: SuperNode 3 s, SuperExec 1 s);
- deploy-local, cold with Flower's polling (`--cold --poll-interval 3`): Flower 1.42's defaults, a
  fresh `flwr-clientapp` per message that imports fedsim (torch, transformers, PEFT) and rebuilds the
  runtime before it trains for milliseconds. This is the "before".

It also times what a cold process pays before training, and compares every ledger with the inline
one byte for byte.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedsim.config import load_scenario
from fedsim.deploy import default_poll_interval, deploy_local
from fedsim.runner import run_scenario

ROOT = Path(__file__).resolve().parents[1]
COLD_CLIENT = """
import time; t0 = time.perf_counter()
import fedsim.client_app
t1 = time.perf_counter()
from fedsim.config import load_scenario
from fedsim.runtime import get_runtime
get_runtime(load_scenario({path!r}, {overrides!r}))
t2 = time.perf_counter()
print(f"{{t1 - t0:.2f}} {{t2 - t1:.2f}}")
"""


def per_round(run_dir: Path) -> list[float]:
    with open(run_dir / "timings.csv", newline="") as fh:
        return [float(r["wall_s"]) for r in csv.DictReader(fh)]


def steady(times: list[float]) -> float:
    """Median wall time of rounds 2.. (round 1 builds the runtime wherever it runs; the median keeps one
    round slowed by another process on the machine from deciding the figure)."""
    return statistics.median(times[1:] or times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default=str(ROOT / "scenarios" / "quickstart.yaml"))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--backbone", default="tiny-random")
    args = parser.parse_args()
    overrides = [
        f"model.backbone={args.backbone}",
        f"rounds={args.rounds}",
        f"clients.num_clients={args.clients}",
        f"clients.per_round={args.clients}",
        "train.engine=per-client",
        "data.eval_samples=64",
        "data.eval_full_final=false",
        "engine=inline",
    ]
    scenario = load_scenario(args.scenario, overrides)
    work = Path(tempfile.mkdtemp(prefix="fedsim-deploy-bench-"))
    print(f"scenario {args.scenario} with {' '.join(overrides)}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    started = time.perf_counter()
    run_scenario(scenario, work / "inline", progress=False)
    rows = [("inline engine (in-process)", time.perf_counter() - started, work / "inline")]
    paths = [
        (f"deploy-local, warm, poll {default_poll_interval(args.clients)} s", {}),
        ("deploy-local, warm, Flower's polling", {"poll_interval_s": 3.0}),
        ("deploy-local, cold, Flower's polling", {"warm": False, "poll_interval_s": 3.0}),
    ]
    for i, (name, options) in enumerate(paths):
        started = time.perf_counter()
        deploy_local(scenario, work / f"deploy{i}", args.clients, round_timeout_s=None, workdir=work / f"flower{i}", log=lambda line: None, **options)
        rows.append((name, time.perf_counter() - started, work / f"deploy{i}"))

    cold = subprocess.run(
        [sys.executable, "-c", COLD_CLIENT.format(path=args.scenario, overrides=overrides)], capture_output=True, text=True, check=True
    ).stdout.split()
    inline_round = steady(per_round(work / "inline"))
    print(f"{'path':<44}{'launch s':>9}{'round s':>9}{'overhead s':>11}   per-round s   ledgers = inline")
    for name, wall, run_dir in rows:
        times = per_round(run_dir)
        same = all((work / "inline" / n).read_bytes() == (run_dir / n).read_bytes() for n in ("rounds.csv", "clients.csv"))
        overhead = steady(times) - inline_round
        print(f"{name:<44}{wall:>9.1f}{steady(times):>9.2f}{overhead:>11.2f}   {' '.join(f'{t:.1f}' for t in times)}   {same}")
    print(f"a cold flwr-clientapp pays: import fedsim.client_app {cold[0]} s + get_runtime {cold[1]} s, per message")
    print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
