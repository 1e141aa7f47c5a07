"""Wall time of one scenario on Flower's deployment engine (loopback) against the in-process inline engine.

    .venv/bin/python benchmarks/deploy_overhead.py [--rounds 2] [--clients 3]

Prints the wall time of each path, the per-round times (timings.csv), and the fixed cost
every message pays on the deployment engine: flwr 1.42 starts a fresh `flwr-clientapp`
process per message, which imports fedsim (torch, transformers, PEFT) and rebuilds the
runtime (tokenizer, backbone, tokenised corpus) before it trains for the same few
milliseconds it takes in-process. Both ledgers are compared byte for byte.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedsim.config import load_scenario
from fedsim.deploy import deploy_local
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default=str(ROOT / "scenarios" / "quickstart.yaml"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--backbone", default="tiny-random")
    args = parser.parse_args()
    overrides = [
        f"model.backbone={args.backbone}",
        f"rounds={args.rounds}",
        f"clients.num_clients={args.clients}",
        f"clients.per_round={args.clients}",
        "data.eval_samples=64",
        "data.eval_full_final=false",
        "engine=inline",
    ]
    scenario = load_scenario(args.scenario, overrides)
    work = Path(tempfile.mkdtemp(prefix="fedsim-deploy-bench-"))
    print(f"scenario {args.scenario} with {' '.join(overrides)}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    started = time.perf_counter()
    run_scenario(scenario, work / "inline", progress=False)
    inline_s = time.perf_counter() - started

    started = time.perf_counter()
    summary = deploy_local(scenario, work / "deploy", args.clients, round_timeout_s=None, workdir=work / "flower", log=lambda line: None)
    deploy_s = time.perf_counter() - started

    cold = subprocess.run(
        [sys.executable, "-c", COLD_CLIENT.format(path=args.scenario, overrides=overrides)], capture_output=True, text=True, check=True
    ).stdout.split()
    identical = all((work / "inline" / n).read_bytes() == (work / "deploy" / n).read_bytes() for n in ("rounds.csv", "clients.csv"))
    messages = args.rounds * args.clients
    print(f"{'path':<40}{'wall s':>10}   per-round s")
    print(f"{'inline engine (in-process)':<40}{inline_s:>10.1f}   {' '.join(f'{t:.1f}' for t in per_round(work / 'inline'))}")
    print(f"{'deploy-local, whole launch':<40}{deploy_s:>10.1f}")
    print(f"{'deploy-local, ServerApp only':<40}{summary['wall_s']:>10.1f}   {' '.join(f'{t:.1f}' for t in per_round(work / 'deploy'))}")
    print(
        f"cold flwr-clientapp: import fedsim.client_app {cold[0]} s + get_runtime {cold[1]} s (paid by each of the {messages} train messages and each node query)"
    )
    print(f"ledgers identical (rounds.csv, clients.csv): {identical}; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
