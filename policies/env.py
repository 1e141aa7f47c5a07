"""`FederatedRoundEnv`: a gymnasium Env in which one step is one federated round of a scenario.

    reset()      a fresh global adapter (a new `RankAdaptiveStrategy`), the episode's seed, and
                 the first round's observation
    step(a)      a in [-1, 1]^(clients · layers) -> integer ranks (policies.common.action_to_ranks);
                 the round runs through the strategy's hooks and an InlineGrid with the real
                 ClientApp, exactly as the ServerApp does (fedsim.server_app.run_train_round, then
                 strategy.evaluate)
    observation  the selected clients' feature rows (policies.common.client_features), flattened
    reward       the strategy's round reward (policies.common.round_reward, configured by the
                 policy's `reward:` section)
    terminated   after `rounds` rounds

Episode seeds: reset(seed=s) runs the scenario with seed scenario.seed + s; reset() with
scenario.seed + (episodes so far), so every
episode draws new partitions, channels and initialisation. The policy whose `feedback` the
strategy calls (the one being trained, e.g. airllm) is `env.policy`; `env.observation` is the
pending round's full `Observation` for agents that act on it directly.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from fedsim.types import Observation
from policies.base import RankPolicy
from policies.common import action_to_ranks, client_features, n_features


class FederatedRoundEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, scenario, policy: RankPolicy | None = None):
        from fedsim.run import quiet_frameworks
        from fedsim.runtime import get_runtime
        from policies.registry import build_policy

        quiet_frameworks()
        self.scenario = scenario
        self.policy = policy if policy is not None else build_policy(scenario.policy)
        self.n_clients = scenario.clients.per_round
        self.n_layers = get_runtime(scenario).n_layers
        self.max_rank = scenario.adapter.max_rank
        self.min_rank = min(getattr(self.policy.config, "min_rank", 0), self.max_rank)
        self.observation_space = gym.spaces.Box(-5.0, 5.0, (self.n_clients * n_features(self.n_layers),), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.n_clients * self.n_layers,), np.float32)
        self.episodes = 0
        self.strategy = None
        self.observation: Observation | None = None
        self.round = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        import torch

        from fedsim.client_app import app as client_app
        from fedsim.inline_grid import InlineGrid
        from fedsim.server_app import build_strategy, discover_nodes

        if self.scenario.threads:
            torch.set_num_threads(self.scenario.threads)
        episode_seed = self.scenario.seed + (int(seed) if seed is not None else self.episodes)
        self.episodes += 1
        scenario = self.scenario.model_copy(update={"seed": episode_seed})
        self.episode_scenario = scenario
        self.strategy = build_strategy(scenario, self.policy)
        self.grid = InlineGrid(client_app, scenario.clients.num_clients)
        self.nodes = discover_nodes(self.grid, scenario.clients.num_clients)
        self.policy.reset()
        self.round = 1
        self.observation = self.strategy.prepare_round(self.round)
        return client_features(self.observation).reshape(-1), {"seed": episode_seed}

    def step(self, action):
        from fedsim.server_app import run_train_round

        assert self.strategy is not None, "call reset() first"
        ranks = action_to_ranks(np.asarray(action).reshape(self.n_clients, self.n_layers), self.min_rank, self.max_rank)
        result = run_train_round(self.grid, self.strategy, self.round, self.nodes, None, ranks=ranks)
        loss, accuracy, _ = self.strategy.evaluate(self.round)
        reward = float(self.strategy.last_reward)
        info = {"seed": self.episode_scenario.seed, "round": self.round, "loss": loss, "accuracy": accuracy, "bytes_up": result.row["bytes_up"], "mean_rank": result.row["mean_rank"], "bytes_up_total": self.strategy.cum_bytes_up}
        terminated = self.round >= self.scenario.rounds
        if terminated:
            features = client_features(self.observation).reshape(-1)  # terminal: any valid observation
        else:
            self.round += 1
            self.observation = self.strategy.prepare_round(self.round)
            features = client_features(self.observation).reshape(-1)
        return features, reward, terminated, False, info
