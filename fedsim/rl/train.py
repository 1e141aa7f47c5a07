"""`fedsim train-policy SCENARIO.yaml --episodes N --out DIR`: train `ppo` or `airllm` online across N federated runs.

Each episode is one run of the scenario in `FederatedRoundEnv` (inline engine, seed = scenario.seed +
episode). `airllm` acts on the env's full observation and learns from every round's feedback;
`ppo` is driven by stable-baselines3's `learn()`. DIR gets the checkpoint (policy.json +
weights.safetensors) and training.csv (one row per episode: return, mean rank, final accuracy, bytes up).
"""

from __future__ import annotations

import csv
import shlex
import time
from pathlib import Path

import numpy as np

from fedsim.types import FedsimError

TRAINABLE = ("ppo", "airllm")
EPISODE_COLUMNS = ["episode", "seed", "return", "mean_rank", "final_accuracy", "bytes_up", "wall_s"]


def add_commands(sub) -> dict:
    parser = sub.add_parser(
        "train-policy",
        help="train a ppo or airllm rank policy across federated runs",
        description="Train the scenario's `policy:` (ppo or airllm) online across N federated runs (episodes) with varied seeds, "
        "and save a checkpoint that `policy: {name: ..., checkpoint: DIR}` loads.",
        epilog="example:\n  fedsim train-policy scenarios/airllm_train.yaml --episodes 50 --out ckpt/airllm",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", help="scenario YAML whose policy section names ppo or airllm")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE", help="override a scenario field (repeatable)")
    parser.add_argument("--episodes", type=int, default=50, help="federated runs to train on (default 50)")
    parser.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return {"train-policy": _cmd_train_policy}


def _cmd_train_policy(args) -> int:
    from fedsim.config import load_scenario

    if args.episodes < 1:
        raise FedsimError(f"--episodes {args.episodes}: must be at least 1")
    scenario = load_scenario(args.scenario, args.overrides)
    command = " ".join(
        ["fedsim train-policy", args.scenario, *[f"--set {shlex.quote(o)}" for o in args.overrides], f"--episodes {args.episodes}", f"--out {args.out}"]
    )
    rows = train_policy(scenario, args.episodes, Path(args.out), progress=not args.no_progress, command=command)
    first, last = rows[: max(1, len(rows) // 5)], rows[-max(1, len(rows) // 5) :]
    print(
        f"checkpoint: {args.out}\n"
        f"episode return: first {len(first)} mean {np.mean([r['return'] for r in first]):.4f}, "
        f"last {len(last)} mean {np.mean([r['return'] for r in last]):.4f}; "
        f"final accuracy (last): {rows[-1]['final_accuracy']:.4f}; wall {sum(r['wall_s'] for r in rows):.0f} s"
    )
    return 0


def train_policy(scenario, episodes: int, out: Path, progress: bool = True, command: str | None = None) -> list[dict]:
    """Train the scenario's policy for `episodes` runs; save it to `out`; return one row per episode."""
    from tqdm.auto import tqdm

    from fedsim.rl.env import FederatedRoundEnv
    from policies.registry import build_policy

    name = scenario.policy.name
    if name not in TRAINABLE:
        raise FedsimError(f"policy.name={name!r} cannot be trained; allowed: {', '.join(TRAINABLE)}")
    if scenario.data.validation_samples == 0:
        raise FedsimError("train-policy needs data.validation_samples > 0: the reward must not read the test split (e.g. --set data.validation_samples=500)")
    if name == "ppo" and not scenario.clients.always_online:
        raise FedsimError(
            f"clients.availability={scenario.clients.availability}, availability_trace={scenario.clients.availability_trace}: training ppo "
            "needs every round to have clients.per_round clients (one SB3 environment per client slot); allowed: clients.availability=1 "
            "and no availability_trace (airllm trains with any)"
        )
    if name == "airllm":
        scenario = scenario.model_copy(update={"policy": scenario.policy.model_copy(update={"learn": True})})
    policy = build_policy(scenario.policy)
    env = FederatedRoundEnv(scenario, policy)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    bar = tqdm(total=episodes, desc=f"train {name}", unit="episode", disable=not progress, dynamic_ncols=True)

    def finish_episode(row: dict) -> None:
        rows.append({**row, "episode": len(rows) + 1})
        bar.update(1)
        bar.set_postfix(ret=f"{row['return']:.3f}", rank=f"{row['mean_rank']:.2f}", acc=f"{row['final_accuracy']:.3f}")
        _write_rows(out / "training.csv", rows)

    if name == "airllm":
        for _ in range(episodes):
            finish_episode(_airllm_episode(env, policy))
    else:
        _ppo_learn(env, policy, episodes, finish_episode)
    bar.close()
    policy.training = {
        "command": command,
        "scenario": scenario.name,
        "episodes": len(rows),
        "seeds": [scenario.seed, scenario.seed + len(rows) - 1],  # evaluate on seeds outside this range
        "snr": _snr_description(scenario.channel),
        "client_decisions": len(rows) * scenario.rounds * scenario.clients.per_round,
        "wall_s": round(sum(r["wall_s"] for r in rows), 1),
    }
    policy.save(out)
    return rows


def _snr_description(channel) -> str:
    if channel.large_scale == "levels":
        return f"levels {channel.snr_levels_db} dB"
    if channel.large_scale in ("uniform", "normal"):
        return f"{channel.large_scale} {channel.snr_db} +- {channel.snr_spread_db} dB"
    return f"{channel.large_scale} {channel.snr_db} dB"


def _airllm_episode(env, policy) -> dict:
    started = time.time()
    _, info = env.reset()
    total, ranks_seen, done = 0.0, [], False
    while not done:
        ranks = policy.ranks(env.observation)
        ranks_seen.append(ranks.mean())
        _, reward, done, _, step_info = env.step_ranks(ranks)
        total += reward
    return _episode_row(env, info["seed"], total, float(np.mean(ranks_seen)), step_info, started)


def _episode_row(env, seed: int, total: float, mean_rank: float, last_info: dict, started: float) -> dict:
    # From the terminal step's info: SB3's vectorised env has already reset `env` for the next episode.
    return {
        "episode": 0,  # numbered by finish_episode
        "seed": last_info["seed"],
        "return": total,
        "mean_rank": mean_rank,
        "final_accuracy": last_info["accuracy"],
        "bytes_up": last_info["bytes_up_total"],
        "wall_s": round(time.time() - started, 2),
    }


def _ppo_learn(env, policy, episodes: int, finish_episode) -> None:
    from stable_baselines3.common.callbacks import BaseCallback

    from fedsim.rl.env import ClientSlotsVecEnv

    class EpisodeRows(BaseCallback):
        def _on_training_start(self) -> None:
            self.total, self.ranks, self.started = 0.0, [], time.time()
            self.finished = 0

        def _on_step(self) -> bool:
            info = self.locals["infos"][0]
            self.total += float(info["reward"])  # the round reward (what the policy is scored on), once per round
            self.ranks.append(info["mean_rank"])
            if self.locals["dones"][0]:
                finish_episode(_episode_row(env, info["seed"], self.total, float(np.mean(self.ranks)), info, self.started))
                self.total, self.ranks, self.started = 0.0, [], time.time()
                self.finished += 1
            return self.finished < episodes  # SB3 would round the steps up to whole rollouts

    slots = ClientSlotsVecEnv(env)
    policy.n_layers = env.n_layers
    policy.build(slots)
    policy.model.learn(total_timesteps=episodes * env.scenario.rounds * slots.num_envs, callback=EpisodeRows())


def _write_rows(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=EPISODE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
