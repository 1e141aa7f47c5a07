"""Where a learning policy's share of what fits sits against the optimum of its own learning signal, in seconds.

    python benchmarks/policy_share_optimum.py --policy ppo --checkpoint policies/checkpoints/ppo --levels -8 -2 2

On `fedsim.rl.synthetic.ChannelRounds` (the real WirelessChannel, Rayleigh fading, 3 of 8 clients on 1 MHz,
3 s deadline, MiniLM's upload sizes) at the given large-scale levels (the training levels, by default some of
them) and channel seeds 1000 and up, for every free decision (more than rank 0 fits): the policy's share
f = Σ_l r_l / (L · r_fit), and the uniform share f* in {0, 0.1, ..., 1} that maximises the checkpoint's own
learning signal (`policies.common.learning_terms` with the `reward:` it was trained with, objective credit
included) on the same delivery draws. Grouped by r_fit, the largest uniform rank that fits. A policy that
learned its signal has f close to f* in every group.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from fedsim.rl.synthetic import ChannelRounds
from fedsim.types import FedsimError, run_script
from policies.common import RewardConfig, fitting_rank, free_decisions, learning_terms, ranks_from_action
from policies.registry import POLICIES, build_policy


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="policy name, e.g. ppo or airllm")
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory (policy.json + weights.safetensors)")
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
    policy = build_policy(POLICIES[args.policy][0](checkpoint=str(args.checkpoint)))  # checks the checkpoint
    # The policy acts from the checkpoint's weights; the reward it was trained with is in its saved config.
    reward = json.loads((args.checkpoint / "policy.json").read_text())["config"].get("reward", {})
    if args.reward:
        override = yaml.safe_load(args.reward)
        if not isinstance(override, dict):
            raise FedsimError(f"--reward {args.reward!r}: not a mapping of reward fields, e.g. '{{objective_credit: [[0, 0.4], [1, 1.0]]}}'")
        reward = {**reward, **override}
    try:
        reward = RewardConfig(**reward)
    except ValueError as error:
        raise FedsimError(f"--reward: {' '.join(str(error).split())}") from None
    actions = np.linspace(-1.0, 1.0, 11)
    print(f"learning signal: {'objective credit ' + str(reward.objective_credit) if reward.objective_credit else 'client terms (no objective credit)'}\n")
    print("| level dB | r_fit | decisions | policy f | optimum f* of its learning signal |")
    print("| --- | --- | --- | --- | --- |")
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
                for action in actions:
                    env.rng.bit_generator.state = state  # the same delivery draws for every candidate share
                    ranks = ranks_from_action(np.full(observation.n_clients, action), observation, 0)
                    scores.append(learning_terms(reward, env.play(observation, ranks, reward), free))
                best = (actions[np.argmax(np.array(scores), axis=0)] + 1) / 2
                rows += [(fit[k], chosen[k].sum() / (observation.n_layers * fit[k]), best[k]) for k in np.flatnonzero(free)]
        table = np.array(rows)
        for r_fit in sorted(set(table[:, 0])):
            group = table[table[:, 0] == r_fit]
            print(f"| {level:g} | {int(r_fit)} | {len(group)} | {group[:, 1].mean():.2f} | {group[:, 2].mean():.2f} |")
    return 0


if __name__ == "__main__":
    run_script(main, "policy_share_optimum")
