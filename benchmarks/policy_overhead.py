"""AirLLM's decision time per round (PPO actor + 50-step DDIM with guidance, 8 clients) against the
wall time of a quickstart round.

    .venv/bin/python benchmarks/policy_overhead.py                  # runs 2 quickstart rounds (MiniLM, inline)
    .venv/bin/python benchmarks/policy_overhead.py --round-rounds 0 # decision timing only

The policy has the default (reference) sizes: 16-dim coarse action, 64-wide actor/critic,
128-wide denoiser with 2 residual blocks, 100 training diffusion steps, 50 DDIM steps, w = 1.5.
The observation has the quickstart's 12 adapted layers (query and value of 6 MiniLM blocks).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedsim.types import ChannelStates, Observation  # noqa: E402
from policies.airllm import AirLlmConfig, AirLlmPolicy  # noqa: E402


def quickstart_observation(n_clients: int, round_: int, rng: np.random.Generator) -> Observation:
    n_layers = 12
    snr = rng.uniform(-5, 15, n_clients)
    rate = 1e6 / n_clients * np.log2(1 + 10 ** (snr / 10))
    channel = ChannelStates(np.arange(n_clients), snr, np.ones(n_clients), np.full(n_clients, 1e6 / n_clients), rate)
    return Observation(
        round=round_,
        total_rounds=20,
        channel=channel,
        layer_names=[f"l{i}" for i in range(n_layers)],
        max_rank=8,
        params_per_rank=np.full(n_layers, 768),
        fixed_params=29645,
        bits_per_param=32,
        last_ranks=np.full((n_clients, n_layers), 8),
        last_loss=4.0,
        last_accuracy=0.1,
        layer_importance=rng.uniform(0, 1, n_layers),
        data_stats=np.tile([9.0, 0.001], (n_clients, 1)),
        deadline_s=5.0,
    )


def decision_times(clients: int, repeats: int, learn: bool) -> list[float]:
    policy = AirLlmPolicy(AirLlmConfig(learn=learn, warmup_transitions=0))
    rng = np.random.default_rng(0)
    policy.ranks(quickstart_observation(clients, 1, rng))  # build the networks
    times = []
    for i in range(repeats):
        observation = quickstart_observation(clients, i % 20 + 1, rng)
        start = time.perf_counter()
        policy.ranks(observation)
        times.append(time.perf_counter() - start)
        policy.pending = None
    return times


def quickstart_round_times(rounds: int) -> list[float]:
    from fedsim.config import load_scenario
    from fedsim.runner import run_scenario

    scenario = load_scenario(Path(__file__).resolve().parents[1] / "scenarios" / "quickstart.yaml", ["engine=inline", f"rounds={rounds}"])
    with tempfile.TemporaryDirectory() as out:
        run_scenario(scenario, Path(out) / "run", progress=False)
        lines = (Path(out) / "run" / "timings.csv").read_text().splitlines()[1:]
    return [float(line.split(",")[1]) for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--round-rounds", type=int, default=2, help="quickstart rounds to time (0 = skip)")
    args = parser.parse_args()
    frozen = decision_times(args.clients, args.repeats, learn=False)
    learning = decision_times(args.clients, args.repeats, learn=True)
    result = {
        "clients": args.clients,
        "ddim_steps": 50,
        "decision_ms_median_frozen": round(1e3 * statistics.median(frozen), 1),
        "decision_ms_median_learning": round(1e3 * statistics.median(learning), 1),
    }
    if args.round_rounds:
        rounds = quickstart_round_times(args.round_rounds)
        result["quickstart_round_s"] = rounds
        result["overhead_percent_of_median_round"] = round(100 * statistics.median(frozen) / statistics.median(rounds), 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
