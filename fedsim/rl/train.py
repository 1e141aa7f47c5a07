"""`fedsim train-policy SCENARIO.yaml --episodes N --out DIR`: train `ppo` or `airllm` online across N federated runs.

Each episode is one run of the scenario in `FederatedRoundEnv` (inline engine, seed = scenario.seed +
episode). `airllm` acts on the env's full observation and learns from every round's feedback;
`ppo` is driven by stable-baselines3's `learn()`. DIR gets the checkpoint (policy.json +
weights.safetensors) and training.csv (one row per episode: return, mean rank, final accuracy, bytes up).

Training writes into a staging directory beside DIR (`.<name>.tmp-<pid>`) that is renamed to DIR only once
the checkpoint is complete: an interrupted or failed training leaves DIR as it was (or absent), never a mix
of an old checkpoint and new files. A DIR that already holds files is refused unless `--overwrite`.
"""

from __future__ import annotations

import csv
import os
import shlex
import shutil
import time
from pathlib import Path

import numpy as np

from fedsim.ledger import holds_files
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
    parser.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory; must be new or empty unless --overwrite")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a checkpoint (or other files) already in --out; the old directory is swapped out only once training has finished",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return {"train-policy": _cmd_train_policy}


def _cmd_train_policy(args) -> int:
    from fedsim.config import load_scenario

    if args.episodes < 1:
        raise FedsimError(f"--episodes {args.episodes}: must be at least 1")
    out = Path(args.out)
    check_checkpoint_out(out, overwrite=args.overwrite)  # before the scenario, the environment and torch are loaded
    scenario = load_scenario(args.scenario, args.overrides)
    command = " ".join(
        ["fedsim train-policy", args.scenario, *[f"--set {shlex.quote(o)}" for o in args.overrides], f"--episodes {args.episodes}", f"--out {args.out}"]
    )
    try:
        rows = train_policy(scenario, args.episodes, out, progress=not args.no_progress, command=command, overwrite=args.overwrite)
    except KeyboardInterrupt as exc:  # the CLI prints "interrupted; <this>" (or "terminated (SIGTERM)") and exits 130 (143)
        state = "left as it was" if out.exists() else "not created"
        raise type(exc)(f"no checkpoint written, {out} {state}") from None
    first, last = rows[: max(1, len(rows) // 5)], rows[-max(1, len(rows) // 5) :]
    print(
        f"checkpoint: {args.out}\n"
        f"episode return: first {len(first)} mean {np.mean([r['return'] for r in first]):.4f}, "
        f"last {len(last)} mean {np.mean([r['return'] for r in last]):.4f}; "
        f"final accuracy (last): {rows[-1]['final_accuracy']:.4f}; wall {sum(r['wall_s'] for r in rows):.0f} s"
    )
    return 0


def check_checkpoint_out(out: Path, overwrite: bool = False) -> None:
    """Cheap checks of `--out` before anything is built: one FedsimError line each."""
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise FedsimError(f"--out {out}: name a checkpoint directory, not '{out.name or out}'")
    if out.exists() and not out.is_dir():
        raise FedsimError(f"--out {out}: is a file, not a directory; name a new or empty directory")
    anchor = out.parent
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        raise FedsimError(f"--out {out}: {anchor} is a file, not a directory")
    if out.is_dir() and not overwrite and holds_files(out):
        state = "a policy checkpoint" if (out / "policy.json").exists() else "files"
        raise FedsimError(f"--out {out}: already holds {state}; choose another directory or pass --overwrite to replace it")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise FedsimError(f"--out {out}: {anchor} is not writable")


def _staging_dir(out: Path) -> Path:
    """A fresh directory beside `out` (same file system, so the final rename is atomic) to train into."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
        if staging.exists():  # left by an earlier process with this pid that was killed outright
            shutil.rmtree(staging)
        staging.mkdir()
    except OSError as exc:
        raise FedsimError(f"--out {out}: cannot create a directory beside it ({exc.strerror or exc})") from None
    return staging


def _move_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished `staging` to `out`; an old `out` (with `overwrite`) is swapped out and deleted only then."""
    aside = None
    try:
        if out.is_dir() and holds_files(out):
            if not overwrite:
                raise FedsimError(f"--out {out}: files appeared there during training; choose another directory or pass --overwrite")
            aside = out.parent / f".{out.name}.old-{os.getpid()}"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(out, aside)
        try:
            os.replace(staging, out)  # an empty `out` is replaced as well
        except BaseException:
            if aside is not None:
                os.replace(aside, out)  # the old checkpoint back where it was
            raise
    except OSError as exc:
        raise FedsimError(f"--out {out}: cannot move the new checkpoint into place ({exc.strerror or exc}); nothing was changed there") from None
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def train_policy(scenario, episodes: int, out: Path, progress: bool = True, command: str | None = None, overwrite: bool = False) -> list[dict]:
    """Train the scenario's policy for `episodes` runs; save it to `out`; return one row per episode.

    `out` must be new or empty unless `overwrite`. Training goes into a staging directory beside `out` that
    replaces it only at the end: on any error or interrupt `out` is left as it was and the staging is removed.
    """
    out = Path(out)
    check_checkpoint_out(out, overwrite=overwrite)
    _check_trainable(scenario)
    staging = _staging_dir(out)
    try:
        rows = _train_into(scenario, episodes, staging, progress, command)
        _move_into_place(staging, out, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rows


def _check_trainable(scenario) -> None:
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


def _train_into(scenario, episodes: int, out: Path, progress: bool, command: str | None) -> list[dict]:
    from tqdm.auto import tqdm

    from fedsim.rl.env import FederatedRoundEnv
    from policies.registry import build_policy

    name = scenario.policy.name
    if name == "airllm":
        scenario = scenario.model_copy(update={"policy": scenario.policy.model_copy(update={"learn": True})})
    policy = build_policy(scenario.policy)
    env = FederatedRoundEnv(scenario, policy)
    rows: list[dict] = []
    bar = tqdm(total=episodes, desc=f"train {name}", unit="episode", disable=not progress, dynamic_ncols=True)

    def finish_episode(row: dict) -> None:
        rows.append({**row, "episode": len(rows) + 1})
        bar.update(1)
        bar.set_postfix(ret=f"{row['return']:.3f}", rank=f"{row['mean_rank']:.2f}", acc=f"{row['final_accuracy']:.3f}")
        _write_rows(out / "training.csv", rows)  # into the staging directory, like everything else until the end

    try:
        if name == "airllm":
            for _ in range(episodes):
                finish_episode(_airllm_episode(env, policy))
        else:
            _ppo_learn(env, policy, episodes, finish_episode)
    finally:
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
