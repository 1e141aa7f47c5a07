"""Where a learning policy's share of what fits sits against the optimum of its own learning signal, in seconds.

    python benchmarks/policy_share_optimum.py --policy ppo --checkpoint policies/checkpoints/ppo --levels -8 -2 2

On `fedsim.rl.synthetic.ChannelRounds` (the real WirelessChannel, Rayleigh fading, 3 of 8 clients on 1 MHz,
3 s deadline, MiniLM's upload sizes) at the given large-scale levels (the training levels, by default some of
them) and channel seeds 1000 and up, for every free decision (more than rank 0 fits): the policy's share
f = Σ_l r_l / (L · r_fit), and the uniform share f* in {0, 0.1, ..., 1} that maximises the checkpoint's own
learning signal (`policies.common.learning_terms` with the `reward:` it was trained with, objective credit
included) on the same delivery draws. Grouped by r_fit, the largest uniform rank that fits. A policy that
learned its signal has f close to f* in every group; "regret" is the signal's best uniform share's value minus
that of the policy's own ranks, per decision (0 for a policy at the optimum).

With `--train N` (ppo only) no checkpoint is read: a fresh ppo (`--config`, PpoConfig fields as YAML) learns for
N decisions on the same synthetic channel at the training levels (scenarios/airllm_train.yaml's -8, -2, 2, 8,
12, 20 dB), channel seeds 1000 and up (`fedsim.rl.synthetic.channel_slots`: its learning signal, the share
action, 3 client slots), then is judged as above on seeds 1000 and up at --levels. Seconds (10,080 decisions
in about 11 s on 2 cores), not the half hour of a federated training: a check
of what a hyperparameter setting learns from a signal (the synthetic channel has no model, so the credit is
the only objective; its states are the federated training's channel but not its losses or importances).

    python benchmarks/policy_share_optimum.py --policy ppo --train 10080 --levels -8 -2 2 8 \
        --config '{lr: 1.0e-3, n_steps: 170, batch_size: 64}' --reward "$(cat credit.yaml)"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from fedsim.config import load_scenario
from fedsim.rl.synthetic import ChannelRounds, channel_slots
from fedsim.types import FedsimError, run_script
from policies.common import RewardConfig, fitting_rank, free_decisions, learning_terms, ranks_from_action
from policies.ppo import PpoConfig, PpoPolicy
from policies.registry import POLICIES, build_policy

TRAINING_SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "airllm_train.yaml"  # its SNR levels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="policy name, e.g. ppo or airllm")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint directory (policy.json + weights.safetensors); not with --train")
    parser.add_argument("--train", type=int, metavar="N", help="instead: train a fresh ppo for N decisions on the synthetic channel")
    parser.add_argument("--config", default="{}", help="with --train: PpoConfig fields as a YAML mapping, e.g. '{lr: 1.0e-3, n_steps: 170}'")
    parser.add_argument("--levels", type=float, nargs="+", default=[-8.0, -2.0, 2.0], help="large-scale SNR levels, dB")
    parser.add_argument("--seeds", type=int, default=30, help="channel seeds per level (1000, 1001, ...)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--reward",
        help="the optimum of this learning signal instead of the checkpoint's: a YAML mapping of reward fields over the "
        "checkpoint's, e.g. '{objective_credit: {-8: [[0, 1.7], [1, 4.7]], 20: [[0, 0.1], [1, 0.6]]}}' (to judge a signal before training on it)",
    )
    args = parser.parse_args(argv)
    if args.policy not in POLICIES:
        raise FedsimError(f"--policy {args.policy!r}: not one of {', '.join(sorted(POLICIES))}")
    if (args.train is None) == (args.checkpoint is None):
        raise FedsimError("give --checkpoint DIR (judge a trained policy) or --train N (train ppo on the synthetic channel), not both")
    if args.train is not None:
        if args.policy != "ppo" or args.train < 1:
            raise FedsimError(f"--train {args.train} with --policy {args.policy}: --train trains ppo for N >= 1 decisions")
        config = _mapping(args.config, "--config")
        reward = config.pop("reward", {})
    else:
        policy = build_policy(POLICIES[args.policy][0](checkpoint=str(args.checkpoint)))  # checks the checkpoint
        # The policy acts from the checkpoint's weights; the reward it was trained with is in its saved config.
        reward = json.loads((args.checkpoint / "policy.json").read_text())["config"].get("reward", {})
    if args.reward:
        reward = {**reward, **_mapping(args.reward, "--reward")}
    try:
        reward = RewardConfig(**reward)
    except ValueError as error:
        raise FedsimError(f"--reward: {' '.join(str(error).split())}") from None
    if args.train is not None:
        try:
            policy = PpoPolicy(PpoConfig(**config, reward=reward))
        except ValueError as error:
            raise FedsimError(f"--config: {' '.join(str(error).split())}") from None
        started = time.perf_counter()
        levels = load_scenario(TRAINING_SCENARIO).channel.snr_levels_db
        policy.build(channel_slots(reward, levels, seed=1000, min_rank=policy.config.min_rank, full_share_at=policy.config.full_share_at))
        policy.n_layers = ChannelRounds.LAYERS
        policy.model.learn(total_timesteps=args.train)
        print(f"trained ppo {args.config} for {args.train} decisions on the synthetic channel in {time.perf_counter() - started:.0f} s")
    actions = np.linspace(-1.0, 1.0, 11)
    print(f"learning signal: {'objective credit ' + str(reward.objective_credit) if reward.objective_credit else 'client terms (no objective credit)'}\n")
    print("| level dB | r_fit | decisions | policy f | optimum f* of its learning signal | regret |")
    print("| --- | --- | --- | --- | --- | --- |")
    for level in args.levels:
        rows = []
        for seed in range(1000, 1000 + args.seeds):
            env = ChannelRounds([level], seed=seed)
            for round_ in range(1, args.rounds + 1):
                observation = env.observation(round_)
                fit, free = fitting_rank(observation), free_decisions(observation, 0)
                state = env.rng.bit_generator.state
                chosen = policy.ranks(observation)
                scores = []
                for ranks in [chosen] + [ranks_from_action(np.full(observation.n_clients, a), observation, 0) for a in actions]:
                    env.rng.bit_generator.state = state  # the same delivery draws for the policy and every candidate share
                    scores.append(learning_terms(reward, env.play(observation, ranks, reward), free))
                own, scores = scores[0], np.array(scores[1:])
                best = (actions[np.argmax(scores, axis=0)] + 1) / 2
                regret = scores.max(axis=0) - own
                rows += [(fit[k], chosen[k].sum() / (observation.n_layers * fit[k]), best[k], regret[k]) for k in np.flatnonzero(free)]
        table = np.array(rows)
        for r_fit in sorted(set(table[:, 0])):
            group = table[table[:, 0] == r_fit]
            print(f"| {level:g} | {int(r_fit)} | {len(group)} | {group[:, 1].mean():.2f} | {group[:, 2].mean():.2f} | {group[:, 3].mean():+.3f} |")
        print(f"| {level:g} | all | {len(table)} | | | {table[:, 3].mean():+.3f} |")
    return 0


def _mapping(text: str, flag: str) -> dict:
    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise FedsimError(f"{flag} {text!r}: not a YAML mapping of fields, e.g. '{{lr: 1.0e-3}}' or '{{objective_credit: [[0, 0.4], [1, 1.0]]}}'")
    return value


if __name__ == "__main__":
    run_script(main, "policy_share_optimum")
