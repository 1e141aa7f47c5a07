"""What `train.cohort_size` costs: seconds per round and peak memory of the cohort engine cut into calls of N clients.

Scenario: MiniLM, BANKING77, 8 clients per round x 10 local steps of batch 16, LoRA r=8, the inline engine (so the
numbers are the training calls', without Ray). Each configuration runs in its own process, one after another;
rounds after the first are timed (the first pays model loading and the prefix cache), and the peak is the
process's maximum resident set (ru_maxrss). The per-client engine is the reference: one call per client.

    .venv/bin/python benchmarks/cohort_size.py [--rounds 3] [--sizes 8 4 2 1]

A cohort's uploads do not depend on the cut beyond float rounding (tests/test_cohort.py); this measures only
time and memory. On a GPU the memory a call holds per client (factors, head, Adam states) is what the cut bounds.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from round_speed import COMMON as ROUND_SPEED  # noqa: E402

# round_speed.py's scenario, on the inline engine: the training calls' time, without Ray.
COMMON = [s for s in ROUND_SPEED if not s.startswith("engine=")] + ["engine=inline"]

# One run in a child process; prints the run's per-round wall times and its peak RSS as JSON.
CHILD = """
import json, resource, sys
from fedsim.config import load_scenario
from fedsim.runner import run_scenario
scenario = load_scenario("scenarios/quickstart.yaml", sys.argv[2:])
run_scenario(scenario, sys.argv[1], progress=False)
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(label: str, sets: list[str], rounds: int, tmp: Path) -> dict:
    out = tmp / label.replace(" ", "_")
    done = subprocess.run([sys.executable, "-c", CHILD, str(out), *COMMON, f"rounds={rounds}", *sets], check=True, cwd=ROOT, capture_output=True, text=True)
    with open(out / "timings.csv", newline="") as fh:
        walls = [float(r["wall_s"]) for r in csv.DictReader(fh)]
    return {"s_per_round": float(np.mean(walls[1:])), "peak_mib": json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run; the first is not timed (default 3)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 4, 2, 1], help="cohort sizes to time (default 8 4 2 1)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the first round is not timed")
    configs = {"per-client": ["train.engine=per-client"]}
    configs |= {f"cohort_size {n}": ["train.engine=cohort", f"train.cohort_size={n}"] for n in args.sizes}
    with tempfile.TemporaryDirectory() as tmp:
        results = {label: run(label, sets, args.rounds, Path(tmp)) for label, sets in configs.items()}
    reference = results["per-client"]["s_per_round"]
    print(f"\n{'configuration':<18} {'s/round':>8} {'vs per-client':>14} {'peak MiB':>9}")
    for label, r in results.items():
        print(f"{label:<18} {r['s_per_round']:>8.2f} {reference / r['s_per_round']:>13.2f}x {r['peak_mib']:>9.0f}")


if __name__ == "__main__":
    main()
