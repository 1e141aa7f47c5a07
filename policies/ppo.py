"""`ppo`: stable-baselines3 PPO choosing, from each selected client's features, the share of the largest rank that meets the deadline that the client sends.

One network, shared by all clients: it sees client k's feature row (policies.common.client_features)
and acts with a Box action in [-1, 1] (SB3 clips the Gaussian sample to the box), the share
f_k = min((a_k + 1)/(a_full + 1), 1) of what fits (policies.common.ranks_from_action; a_full = `full_share_at`,
1 by default, so f_k = (a_k + 1)/2): a total of
L · (r_min + f_k · (r_fit - r_min)) over its L layers, shared equally, where r_fit is the largest uniform
rank that meets the deadline at the client's rate. One share per client instead of one action per
(client, layer) is what PPO can learn in the training budget: the reward depends on a client's ranks
mostly through its upload size, i.e. their sum.

It learns only under `fedsim train-policy`: SB3's `learn()` drives `fedsim.rl.env.ClientSlotsVecEnv`,
in which every client slot of a round is one sub-environment rewarded with its client's own term of
the round reward (`policies.common.client_terms`), plus, with `reward.objective_credit`, the fitted
worth of its delivered update to the shared objective (`policies.common.learning_terms`; the shipped
checkpoint was trained so). (An earlier version acted jointly on all clients
of a round with one action scored by the round reward; in the same budget it barely learned, since
a client's credit drowned in the others' terms.) In a `fedsim run` it acts with the deterministic
(mean) action of a checkpoint, for any number of clients per round.

Checkpoint: policy.json (config, sizes) + weights.safetensors (SB3's policy network). SB3's own
zip format pickles parts of the model, so it is not used.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedsim.types import FedsimError, Observation
from policies.base import RankPolicy, assign_tensors, clip_ranks
from policies.common import RewardConfig, client_features, n_features, ranks_from_action


class PpoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["ppo"] = "ppo"
    prices_uploads: ClassVar[bool] = True  # sizes ranks by the upload's bits on the channel (fitting_rank)
    checkpoint: str | None = Field(None, description="Directory written by `fedsim train-policy` (policy.json + weights.safetensors).")
    seed: int = Field(0, description="Seeds SB3's initialisation and sampling.")
    min_rank: int = Field(0, ge=0, description="Smallest rank the policy may give a layer.")
    reward: RewardConfig = Field(default_factory=RewardConfig)
    hidden: int = Field(64, ge=4, description="Width of the two hidden layers of actor and critic.")
    lr: float = Field(3e-4, gt=0)
    n_steps: int = Field(64, ge=2, description="Rounds per PPO rollout (across episodes).")
    batch_size: int = Field(32, ge=2)
    n_epochs: int = Field(10, ge=1)
    gamma: float = Field(0.0, ge=0, le=1, description="Discount across rounds (0: ranks act on the round they are chosen in).")
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip: float = Field(0.2, gt=0)
    ent_coef: float = Field(0.0, ge=0)
    init_log_std: float = Field(-1.0, description="Initial log σ of the Gaussian action (SB3's log_std_init); actions are clipped to [-1, 1].")
    full_share_at: float = Field(
        1.0,
        gt=-1,
        le=1,
        description="The action a_full from which a client sends all that fits: share f = min((a + 1) / (a_full + 1), 1). "
        "1: f = (a + 1) / 2 over the whole box; below 1, the top of the box is a band of f = 1 the mean action can sit inside. "
        "A loaded checkpoint acts with the value it was trained with.",
    )


def spaces_only_env(observation_space, action_space):
    """Just enough of a gymnasium Env for SB3 to size its networks when acting from a checkpoint."""
    import gymnasium as gym

    class SpacesOnlyEnv(gym.Env):
        def __init__(self):
            self.observation_space, self.action_space = observation_space, action_space

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(observation_space.shape, dtype=np.float32), {}

        def step(self, action):
            raise RuntimeError("a loaded PPO checkpoint acts through RankPolicy.ranks, not env.step")

    return SpacesOnlyEnv()


class PpoPolicy(RankPolicy):
    name = "ppo"
    ACTION_MAP = ("min_rank", "full_share_at")

    def __init__(self, config: PpoConfig):
        super().__init__(config)
        self.model = None
        self.n_layers: int | None = None
        self.training: dict = {}  # how the checkpoint was trained (command, seeds, wall time), kept in policy.json

    def build(self, env) -> None:
        """Create the SB3 model for `env` (a FederatedRoundEnv while training, a spaces-only env when loading)."""
        from stable_baselines3 import PPO
        from stable_baselines3.common.logger import Logger

        c = self.config
        self.model = PPO(
            "MlpPolicy",
            env,
            learning_rate=c.lr,
            n_steps=c.n_steps,
            batch_size=c.batch_size,
            n_epochs=c.n_epochs,
            gamma=c.gamma,
            gae_lambda=c.gae_lambda,
            clip_range=c.clip,
            ent_coef=c.ent_coef,
            policy_kwargs={"net_arch": [c.hidden, c.hidden], "log_std_init": c.init_log_std},
            seed=c.seed,
            device="cpu",
            verbose=0,
        )
        # SB3's default logger makes an empty /tmp/SB3-<time> folder on every learn(); nothing reads it.
        self.model.set_logger(Logger(folder=None, output_formats=[]))

    def _spaces(self, n_layers: int):
        import gymnasium as gym

        return gym.spaces.Box(-5.0, 5.0, (n_features(n_layers),), np.float32), gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def ranks(self, observation: Observation) -> np.ndarray:
        n, n_layers = observation.n_clients, observation.n_layers
        if self.model is None:
            self.n_layers = n_layers
            self.build(spaces_only_env(*self._spaces(n_layers)))
        if n_layers != self.n_layers:
            raise FedsimError(f"policy ppo: trained for {self.n_layers} adapted layers, the scenario has {n_layers}; retrain it for this adapter")
        action, _ = self.model.predict(client_features(observation), deterministic=True)
        ranks = ranks_from_action(np.asarray(action).reshape(n), observation, self.config.min_rank, full_share_at=self.config.full_share_at)
        return clip_ranks(ranks, observation.max_rank)

    def state_dict(self) -> dict:
        return {"n_layers": self.n_layers, "hidden": self.config.hidden, "full_share_at": self.config.full_share_at, "training": self.training}

    def load_state_dict(self, state: dict) -> None:
        n_layers, hidden = state.get("n_layers"), state.get("hidden", self.config.hidden)
        # The weights were trained for their checkpoint's action map, so it wins over the scenario's (1: saved before it existed).
        full_share_at = state.get("full_share_at", 1.0)
        if n_layers is None:
            return
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (n_layers, hidden)):
            raise FedsimError(f"policy checkpoint: ppo sizes n_layers={n_layers!r}, hidden={hidden!r}; expected positive integers")
        if isinstance(full_share_at, bool) or not isinstance(full_share_at, (int, float)) or not -1 < full_share_at <= 1:
            raise FedsimError(f"policy checkpoint: ppo full_share_at={full_share_at!r}; expected a number in (-1, 1]")
        self.config = self.config.model_copy(update={"hidden": hidden, "full_share_at": float(full_share_at)})
        self.n_layers = n_layers
        self.training = state.get("training") if isinstance(state.get("training"), dict) else {}
        self.build(spaces_only_env(*self._spaces(n_layers)))

    def tensors(self) -> dict:
        return {} if self.model is None else dict(self.model.policy.state_dict())

    def load_tensors(self, tensors: dict, source) -> None:
        if self.model is None:
            raise FedsimError(f"policy checkpoint {source}: weights present but policy.json has no sizes")
        assign_tensors(self.tensors(), tensors, source)
