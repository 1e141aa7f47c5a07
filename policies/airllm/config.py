"""`airllm`'s configuration: importable without torch, so that loading a scenario stays light."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from policies.common import RewardConfig


class AirLlmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["airllm"] = "airllm"
    prices_uploads: ClassVar[bool] = True  # sizes ranks by the upload's bits on the channel (fitting_rank)
    checkpoint: str | None = Field(None, description="Directory written by `fedsim train-policy` (policy.json + weights.safetensors).")
    learn: bool = Field(False, description="Keep learning online from each round's reward (true) or act frozen (false).")
    seed: int = Field(0, description="Seeds network initialisation, exploration and the DDIM start noise.")
    min_rank: int = Field(0, ge=0, description="Smallest rank the policy may give a layer.")
    reward: RewardConfig = Field(default_factory=RewardConfig)
    # PPO (coarse action); stable-baselines3's names
    coarse_dim: int = Field(
        1, ge=1, description="Dimension of PPO's coarse action (clipped to [-1, 1]); its first component is the share of the fitting rank sent."
    )
    hidden: int = Field(64, ge=4, description="Width of the actor and critic MLPs.")
    lr: float = Field(3e-4, gt=0)
    clip: float = Field(0.2, gt=0)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    gamma: float = Field(0.0, ge=0, le=1, description="Discount along a client slot's rounds (0: a rank is judged by its own round).")
    ent_coef: float = Field(0.01, ge=0)
    vf_coef: float = Field(0.5, ge=0)
    n_epochs: int = Field(4, ge=1, description="PPO epochs per update.")
    batch_size: int = Field(64, ge=1, description="PPO minibatch, in client decisions.")
    n_steps: int = Field(16, ge=1, description="Rounds per PPO rollout (an update also ends every run).")
    init_log_std: float = Field(0.0, description="Initial log σ of the coarse action's Gaussian (before the clip).")
    # DDIM (refinement)
    denoiser_hidden: int = Field(128, ge=4)
    denoiser_blocks: int = Field(2, ge=1)
    train_timesteps: int = Field(100, ge=2, description="Diffusion steps of the training noise schedule.")
    sampling_steps: int = Field(50, ge=1, description="DDIM sampling steps per decision.")
    guidance: float = Field(1.5, ge=0, description="Classifier-free guidance weight w.")
    cond_drop: float = Field(0.1, ge=0, le=1, description="Probability of dropping the condition while training the denoiser.")
    spread: int = Field(
        1, ge=1, description="A layer's rank stays within spread - 1 of the client's mean rank rounded down / up (1: the pattern places the remainder)."
    )
    sharpness: float = Field(2.0, gt=0, description="κ: layer l gets rank in proportion to exp(κ x_l), x in [-1, 1].")
    awr_beta: float = Field(1.0, gt=0, description="Temperature of the denoiser's advantage weights, in standard deviations of the advantage.")
    awr_max_weight: float = Field(20.0, ge=1, description="Cap on an advantage weight.")
    ddim_lr: float = Field(1e-3, gt=0)
    ddim_batch: int = Field(128, ge=1)
    ddim_updates: int = Field(20, ge=0, description="Denoiser gradient steps per PPO update.")
    buffer_size: int = Field(4096, ge=1)
    explore_noise: float = Field(0.3, ge=0, description="σ of the Gaussian noise on the executed pattern while learning.")
    warmup_transitions: int = Field(256, ge=0)
