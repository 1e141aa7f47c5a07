"""Seconds per round: fedsim against the naive Flower + PEFT baseline, in one invocation.

Scenario: MiniLM, BANKING77, 8 clients x 10 local steps of batch 16, LoRA r=8 on query/value,
Flower's simulation engine for both. Each configuration runs in its own process; rounds
after the first are timed (the first pays Ray start-up, model loading, cache warm-up).
fedsim's rounds also include a 32-example server evaluation; the baseline's do not.

It also prints fedsim's real (non-pad) training tokens per second against the backbone's raw
fp32 forward+backward throughput at the same batch size (batch 16 padded to 64), measured here.

    .venv/bin/python benchmarks/round_speed.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FEDSIM = [sys.executable, "-m", "fedsim.cli"]

COMMON = [
    "model.backbone=minilm",
    "clients.per_round=8",
    "train.local_steps=10",
    "train.batch_size=16",
    "policy.rank=8",
    "data.eval_samples=32",
    "data.eval_full_final=false",
    "engine=flower",
]

CONFIGS = {
    "fedsim per-client fp32": ["train.engine=per-client", "train.precision=fp32"],
    "fedsim cohort fp32": ["train.engine=cohort", "train.precision=fp32"],
}
# Opt-in (--bf16): on a CPU without native bf16 (like the project's), autocast emulates it and a
# round takes ~10 minutes.
BF16_CONFIGS = {"fedsim cohort bf16": ["train.engine=cohort", "train.precision=bf16"]}


def raw_throughput(batch: int = 16, width: int = 64, steps: int = 8) -> float:
    """Padded tokens/s of forward+backward through MiniLM + LoRA at fixed shape: the compute limit."""

    from fedsim.adapter_state import load_payload, truncate
    from fedsim.config import scenario_from_dict
    from fedsim.runtime import get_runtime

    runtime = get_runtime(scenario_from_dict({"model": {"backbone": "minilm"}, "train": {"prefix_cache": False}}))
    load_payload(runtime.model, truncate(runtime.initial_state, [8] * runtime.n_layers))
    rng = np.random.default_rng(0)
    times = []
    for step in range(steps + 2):
        b = runtime.train.batch(rng.choice(len(runtime.train), batch, replace=False), pad_to=width)
        start = time.perf_counter()
        loss = runtime.model.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logsumexp(-1).mean()
        loss.backward()
        if step >= 2:
            times.append(time.perf_counter() - start)
    return batch * width / float(np.mean(times))


def fedsim_real_tokens(run_dir: Path, rounds: list[int]) -> int:
    """Real tokens the clients of `rounds` trained on, re-derived from the seeded batches in clients.csv."""
    from fedsim.batches import client_batches
    from fedsim.config import load_scenario
    from fedsim.runtime import get_runtime

    runtime = get_runtime(load_scenario(run_dir / "config.yaml"))
    total = 0
    with open(run_dir / "clients.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if int(row["round"]) in rounds:
                for idx in client_batches(runtime, int(row["client"]), int(row["round"])):
                    total += int(runtime.train.lengths[idx].sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="also time precision: bf16 (slow on CPUs without native bf16)")
    args = parser.parse_args()
    timed = list(range(2, args.rounds + 1))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_baseline:
            out = tmp / "baseline.json"
            subprocess.run(
                [sys.executable, str(ROOT / "benchmarks" / "baseline_flower_peft.py"), "--rounds", str(args.rounds), "--json", str(out)],
                check=True,
                cwd=ROOT,
            )
            base = json.loads(out.read_text())
            seconds = float(np.mean(base["round_s"][1:]))
            results["baseline flower+peft fp32"] = {"s_per_round": seconds, "real_tok_s": sum(base["tokens"][1:]) / sum(base["round_s"][1:])}
        for label, sets in (CONFIGS | (BF16_CONFIGS if args.bf16 else {})).items():
            run_dir = tmp / label.replace(" ", "_")
            cmd = FEDSIM + ["run", "scenarios/quickstart.yaml", "--out", str(run_dir), "--no-progress", "--set", f"rounds={args.rounds}"]
            for item in COMMON + sets:
                cmd += ["--set", item]
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            with open(run_dir / "timings.csv", newline="") as fh:
                walls = {int(r["round"]): float(r["wall_s"]) for r in csv.DictReader(fh)}
            seconds = float(np.mean([walls[r] for r in timed]))
            tokens = fedsim_real_tokens(run_dir, timed)
            results[label] = {"s_per_round": seconds, "real_tok_s": tokens / sum(walls[r] for r in timed)}
    limit = raw_throughput()
    base = results.get("baseline flower+peft fp32", {}).get("s_per_round")
    print(f"\n{'configuration':<28} {'s/round':>8} {'vs baseline':>12} {'real tok/s':>11} {'% of raw':>9}")
    for label, r in results.items():
        speedup = f"{base / r['s_per_round']:.2f}x" if base else "-"
        print(f"{label:<28} {r['s_per_round']:>8.2f} {speedup:>12} {r['real_tok_s']:>11.0f} {100 * r['real_tok_s'] / limit:>8.0f}%")
    print(f"raw fp32 forward+backward, batch 16 x 64 padded tokens: {limit:.0f} tok/s")


if __name__ == "__main__":
    main()
