"""`FederatedRoundEnv`: a gymnasium Env in which one step is one federated round of a scenario.

    reset()      a fresh global adapter (a new `RankAdaptiveStrategy`), the episode's seed, and
                 the first round's observation
    step(a)      a in [-1, 1]^clients, the share of what fits that each client sends (policies.common.ranks_from_action:
                 a total of L · (r_min + (a + 1)/2 · (r_fit - r_min)) shared equally over its L layers,
                 r_fit the largest uniform rank that meets the deadline at its rate);
                 `step_ranks(ranks)` takes integer ranks [clients, layers] from an agent that
                 chooses them itself (airllm). The round runs through the strategy's hooks and an InlineGrid with the real
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
from stable_baselines3.common.vec_env import VecEnv

from fedsim.types import Observation
from policies.base import RankPolicy
from policies.common import client_features, free_decisions, learning_terms, n_features, ranks_from_action


class FederatedRoundEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, scenario, policy: RankPolicy | None = None):
        from fedsim.quiet import quiet_frameworks
        from fedsim.runtime import get_runtime
        from policies.registry import build_policy

        quiet_frameworks()
        self.scenario = scenario
        self.policy = policy if policy is not None else build_policy(scenario.policy)
        self.n_clients = scenario.clients.per_round
        self.n_layers = get_runtime(scenario).n_layers
        self.max_rank = scenario.adapter.max_rank
        self.min_rank = min(getattr(self.policy.config, "min_rank", 0), self.max_rank)
        self.full_share_at = getattr(self.policy.config, "full_share_at", 1.0)
        self.observation_space = gym.spaces.Box(-5.0, 5.0, (self.n_clients * n_features(self.n_layers),), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.n_clients,), np.float32)
        self.episodes = 0
        self.strategy = None
        self.observation: Observation | None = None
        self.round = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        from fedsim.client_app import app as client_app
        from fedsim.inline_grid import InlineGrid
        from fedsim.server_app import build_strategy, simulated_nodes
        from fedsim.threads import use_threads

        use_threads(self.scenario.threads)
        episode_seed = self.scenario.seed + (int(seed) if seed is not None else self.episodes)
        self.episodes += 1
        scenario = self.scenario.model_copy(update={"seed": episode_seed})
        self.episode_scenario = scenario
        self.strategy = build_strategy(scenario, self.policy)
        self.grid = InlineGrid(client_app, scenario.clients.num_clients)
        self.nodes = simulated_nodes(self.grid, scenario.clients.num_clients)
        self.policy.reset()
        self.round = 1
        self.observation = self.strategy.prepare_round(self.round)
        return client_features(self.observation).reshape(-1), {"seed": episode_seed}

    def step(self, action):
        return self.step_ranks(ranks_from_action(np.asarray(action), self.observation, self.min_rank, full_share_at=self.full_share_at))

    def step_ranks(self, ranks: np.ndarray):
        from fedsim.server_app import run_train_round

        assert self.strategy is not None, "call reset() first"
        result = run_train_round(self.grid, self.strategy, self.round, self.nodes, None, ranks=ranks)
        loss, accuracy, _ = self.strategy.evaluate(self.round)
        reward = float(self.strategy.last_reward)
        info = {
            "seed": self.episode_scenario.seed,
            "round": self.round,
            "reward": reward,
            "loss": loss,
            "accuracy": accuracy,
            "bytes_up": result.row.bytes_up,
            "mean_rank": result.row.mean_rank,
            "bytes_up_total": self.strategy.cum_bytes_up,
        }
        terminated = self.round >= self.scenario.rounds
        if terminated:
            features = client_features(self.observation).reshape(-1)  # terminal: any valid observation
        else:
            self.round += 1
            self.observation = self.strategy.prepare_round(self.round)
            features = client_features(self.observation).reshape(-1)
        return features, reward, terminated, False, info


class SlotsVecEnv(VecEnv):
    """One round's client slots as stable-baselines3 sub-environments with shared weights.

    Slot k observes the k-th client's feature row (`policies.common.client_features`), acts with its
    share of what fits in [-1, 1] (`ranks_from_action`) and is rewarded with its own learning signal
    (`policies.common.learning_terms`: its term of the round reward, plus its objective credit when the
    reward has one; 0 where no action could change its ranks). All slots step together, one round per
    step, and end their episodes together; SB3 gets each slot's terminal observation in its info, as
    with any VecEnv. A subclass says what a round is: `_new_episode()` sets `self.observation`, the
    pending round's `Observation`; `_play(ranks)` runs that round and returns its per-client round
    info, whether the episode ended, and the info SB3 logs, and moves `self.observation` on unless it ended.
    """

    render_mode = None

    def __init__(self, n_slots: int, n_layers: int, reward, min_rank: int, full_share_at: float = 1.0):
        obs_space = gym.spaces.Box(-5.0, 5.0, (n_features(n_layers),), np.float32)
        super().__init__(n_slots, obs_space, gym.spaces.Box(-1.0, 1.0, (1,), np.float32))
        self.reward, self.min_rank, self.full_share_at = reward, min_rank, full_share_at
        self.actions = np.zeros((n_slots, 1), dtype=np.float32)
        self.observation: Observation | None = None

    def _new_episode(self) -> None:
        raise NotImplementedError

    def _play(self, ranks: np.ndarray) -> tuple[dict, bool, dict]:
        raise NotImplementedError

    def reset(self):
        self._new_episode()
        return client_features(self.observation)

    def step_async(self, actions) -> None:
        self.actions = np.asarray(actions, dtype=float).reshape(self.num_envs, -1)

    def step_wait(self):
        observation = self.observation
        ranks = ranks_from_action(self.actions[:, 0], observation, self.min_rank, full_share_at=self.full_share_at)
        free = free_decisions(observation, self.min_rank)
        round_info, done, info = self._play(ranks)
        rewards = learning_terms(self.reward, round_info, free).astype(np.float32)
        infos = [dict(info) for _ in range(self.num_envs)]
        if done:
            terminal_rows = client_features(observation)
            for k, row in enumerate(infos):
                row["terminal_observation"] = terminal_rows[k]
            rows = self.reset()
        else:
            rows = client_features(self.observation)
        return rows, rewards, np.full(self.num_envs, done), infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name, indices=None):
        return [getattr(self, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name, value, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
        return [getattr(self, method_name)(*method_args, **method_kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * len(self._indices(indices))

    def _indices(self, indices):
        return range(self.num_envs) if indices is None else ([indices] if isinstance(indices, int) else list(indices))


class ClientSlotsVecEnv(SlotsVecEnv):
    """A federated round's selected clients as SB3 sub-environments (`SlotsVecEnv`): each round is one
    step of the wrapped `FederatedRoundEnv`. So stable-baselines3's PPO learns one per-client policy from
    per-client credit, as `airllm` does, instead of one joint action scored by the round mean (which
    did not learn in the budget: a client's credit drowned in the other clients' terms).
    """

    def __init__(self, env: FederatedRoundEnv):
        self.env = env
        super().__init__(env.n_clients, env.n_layers, env.policy.config.reward, env.min_rank, env.full_share_at)

    def _new_episode(self) -> None:
        self.env.reset()
        self.observation = self.env.observation

    def _play(self, ranks: np.ndarray) -> tuple[dict, bool, dict]:
        _, _, done, _, info = self.env.step_ranks(ranks)
        self.observation = self.env.observation
        return self.env.strategy.last_info, done, info
