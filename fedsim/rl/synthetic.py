"""`ChannelRounds`: a synthetic environment for rank policies with the real parts that decide a client's
own reward term and nothing else: no model is trained, so a policy can be checked against the channel in
seconds (tests/test_policies.py; benchmarks/policy_synthetic.py).

Its channel is the real `WirelessChannel` (Rayleigh fading over per-client large-scale SNR levels, 1 MHz
shared by 3 of 8 clients, 3 s deadline, 8-bit uploads), its reward `policies.common.client_terms`, its upload
sizes MiniLM's adapter layout (12 layers of 768 parameters per rank, a 29,645-parameter head, one 32-bit scale
per quantised tensor). The loss and accuracy the policy observes follow a fixed schedule. A client's term
depends on its ranks, its channel and the delivery draw only, so the term of a decision here is what it
would be in a federated run on the same channel.
"""

from __future__ import annotations

import numpy as np

from channels import ChannelConfig, build_channel
from fedsim.types import Observation
from policies.common import RewardConfig, client_terms


class ChannelRounds:
    """A synthetic federated environment with the real parts that decide a client's reward: the
    `WirelessChannel` (Rayleigh fading over per-client SNR levels, 1 MHz shared by 3 clients, 3 s
    deadline, 8-bit uploads) and `policies.common.client_terms`; MiniLM's adapter layout (12 layers of
    768 parameters per rank, a 29,645-parameter head). No training: the loss is a fixed schedule.
    Its channel-dependent optimum is `oracle_ranks`: per client, the uniform rank that maximises its own term."""

    LAYERS, PER_RANK, HEAD, BITS = 12, 768, 29_645, 8

    def __init__(self, snr_levels, seed):
        config = ChannelConfig(kind="rayleigh", large_scale="levels", snr_levels_db=list(snr_levels), deadline_s=3.0)
        self.channel = build_channel(config, seed)
        self.channel.set_data_sizes(np.full(8, 100))
        self.rng = np.random.default_rng(seed)
        self.importance = np.linspace(2.0, 0.5, self.LAYERS)

    def observation(self, round_: int) -> Observation:
        states = self.channel.draw(round_, np.sort(self.rng.choice(8, 3, replace=False)), self.rng)
        return Observation(
            round=round_, total_rounds=6, channel=states, layer_names=[f"l{i}" for i in range(self.LAYERS)], max_rank=8,
            params_per_rank=np.full(self.LAYERS, self.PER_RANK), fixed_params=self.HEAD, bits_per_param=self.BITS,
            last_ranks=np.full((3, self.LAYERS), 8), last_loss=3.0 - 0.3 * round_, last_accuracy=0.1 * round_,
            layer_importance=self.importance, data_stats=np.tile([7.0, 0.01], (3, 1)), deadline_s=3.0,
        )  # fmt: skip

    def bits(self, ranks):
        ranks = np.atleast_2d(ranks)
        return ((ranks.sum(1) * self.PER_RANK + self.HEAD) * self.BITS + 32 * (2 * (ranks > 0).sum(1) + 2)).astype(float)

    def play(self, observation: Observation, ranks: np.ndarray, config: RewardConfig) -> dict:
        bits = self.bits(ranks)
        sent = self.channel.uplink(observation.channel, bits, self.rng)
        full = self.bits(np.full(self.LAYERS, 8))[0]
        return {
            "loss": observation.last_loss, "accuracy": observation.last_accuracy, "bits_up": bits, "bits_full": np.full(3, full),
            "rate_bps": observation.channel.rate_bps, "snr_db": observation.channel.snr_db, "energy_j": np.array([t.energy_j for t in sent]), "deadline_s": 3.0,
            "drop_reasons": [t.drop_reason for t in sent], "delivered": np.array([t.delivered for t in sent]),
            "ranks": ranks, "max_rank": 8, "layer_importance": self.importance, "done": observation.round == 6,
        }  # fmt: skip

    def oracle_ranks(self, observation: Observation, config: RewardConfig) -> np.ndarray:
        best = np.full(3, -np.inf)
        choice = np.zeros(3)
        for r in range(9):
            ranks = np.full((3, self.LAYERS), r)
            bits = self.bits(ranks)
            late = bits > observation.channel.rate_bps * 3.0
            info = {"bits_up": bits, "bits_full": np.full(3, self.bits(np.full(self.LAYERS, 8))[0]), "rate_bps": observation.channel.rate_bps,
                    "deadline_s": 3.0, "drop_reasons": ["deadline" if x else "" for x in late], "delivered": ~late, "ranks": ranks,
                    "max_rank": 8, "layer_importance": self.importance}  # fmt: skip
            terms = client_terms(config, info)
            choice = np.where(terms > best, r, choice)
            best = np.maximum(terms, best)
        return choice


def channel_slots(reward: RewardConfig, snr_levels, seed: int = 1000, min_rank: int = 0, full_share_at: float = 1.0):
    """`ChannelRounds` episodes (6 rounds each, episode e on channel seed `seed` + e) as a stable-baselines3 VecEnv
    of its 3 client slots (`fedsim.rl.env.SlotsVecEnv`: each rewarded with its learning signal, the action the
    share of what fits), as `fedsim.rl.env.ClientSlotsVecEnv` is for federated runs: `ppo` trains here in
    minutes, so what its hyperparameters learn can be checked against the signal's optimum before a federated
    training (benchmarks/policy_share_optimum.py --train)."""
    from fedsim.rl.env import SlotsVecEnv

    class ChannelSlotsVecEnv(SlotsVecEnv):
        def __init__(self):
            super().__init__(3, ChannelRounds.LAYERS, reward, min_rank, full_share_at)
            self.episodes = 0

        def _new_episode(self) -> None:
            self.env = ChannelRounds(snr_levels, seed=seed + self.episodes)
            self.episodes += 1
            self.round = 1
            self.observation = self.env.observation(1)

        def _play(self, ranks: np.ndarray) -> tuple[dict, bool, dict]:
            round_info, done = self.env.play(self.observation, ranks, reward), self.round >= 6
            if not done:
                self.round += 1
                self.observation = self.env.observation(self.round)
            return round_info, done, {}

    return ChannelSlotsVecEnv()
