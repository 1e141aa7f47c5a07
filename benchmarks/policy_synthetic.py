"""A rank policy against channel-greedy and the per-client optimum on the synthetic channel, in seconds.

    python benchmarks/policy_synthetic.py --policy airllm --checkpoint policies/checkpoints/airllm

`fedsim.rl.synthetic.ChannelRounds` (the real WirelessChannel with Rayleigh fading, 3 of 8 clients on 1 MHz,
3 s deadline, MiniLM's upload sizes, the real per-client reward term) at held-out SNR levels. Every policy
sees the same observations and the same delivery draws (paired), and the script prints, per level, each
one's mean client term per client-round and mean rank, and the paired difference policy − channel-greedy
with its 95% t-interval over client-rounds. The oracle is the best uniform rank per client (it knows the
term; no policy can), so policy − oracle says how much is left.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from fedsim.rl.synthetic import ChannelRounds
from policies.common import RewardConfig, client_terms, ranks_from_action
from policies.registry import POLICIES, build_policy


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="policy name, e.g. airllm or ppo")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (policy.json + weights.safetensors)")
    parser.add_argument("--levels", type=float, nargs="+", default=[-5.0, 5.0, 15.0], help="large-scale SNR levels, dB")
    parser.add_argument("--seeds", type=int, default=20, help="channel seeds per level (0, 1, ...)")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)

    policy = build_policy(POLICIES[args.policy][0](checkpoint=args.checkpoint))
    reward = RewardConfig()
    deciders = {
        args.policy: policy.ranks,
        "channel-greedy": lambda o: ranks_from_action(np.ones(o.n_clients), o, 0),
        "oracle": None,
    }
    print(f"{'level':>6} {'policy':>15} {'term':>8} {'rank':>6}   {args.policy} - this [95% CI]")
    for level in args.levels:
        terms = {name: [] for name in deciders}
        ranks = {name: [] for name in deciders}
        for seed in range(args.seeds):
            env = ChannelRounds([level], seed=seed)
            for round_ in range(1, args.rounds + 1):
                observation = env.observation(round_)
                state = env.rng.bit_generator.state
                for name, decide in deciders.items():
                    env.rng.bit_generator.state = state  # the same delivery draws for every policy
                    chosen = decide(observation) if decide else np.repeat(env.oracle_ranks(observation, reward)[:, None], env.LAYERS, 1)
                    terms[name] += list(client_terms(reward, env.play(observation, chosen, reward)))
                    ranks[name] += list(np.asarray(chosen).mean(1))
        mine = np.array(terms[args.policy])
        for name in deciders:
            line = f"{level:6.1f} {name:>15} {np.mean(terms[name]):8.4f} {np.mean(ranks[name]):6.2f}"
            if name != args.policy:
                diff = mine - np.array(terms[name])
                half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
                line += f"   {diff.mean():+.4f} [{diff.mean() - half:+.4f}, {diff.mean() + half:+.4f}]"
            print(line)


if __name__ == "__main__":
    main()
