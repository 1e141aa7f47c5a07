"""`channel-greedy`: per client, the largest uniform rank whose upload meets the deadline at its rate.

For client k with rate C_k and deadline T, the upload at uniform rank r costs

    bits(r) = (r · Σ_l p_l + p_fixed) · b + s · (2 L + 2)

(p_l parameters per rank component of layer l, p_fixed the head, b bits per parameter, and, when
b < 32, one s = 32-bit float scale per quantised tensor: A and B of L layers plus the head's two),
and the policy picks

    r_k = max { r in [0, max_rank] : bits(r) <= C_k · T · margin }.

T is the observation's deadline (the channel's), else this policy's `deadline_s`; with
neither (inf), every client gets max_rank. A client that cannot fit even rank 0 gets 0.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedsim.types import Observation
from policies.base import RankPolicy, clip_ranks


class ChannelGreedyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["channel-greedy"] = "channel-greedy"
    deadline_s: float = Field(math.inf, gt=0, description="Upload deadline used when the channel sets none (inf = no deadline: max_rank).")
    margin: float = Field(1.0, gt=0, le=1, description="Use only this fraction of C·T, leaving headroom for fading and protocol overhead.")
    scale_bits: int = Field(32, ge=0, description="Bits of the per-tensor scale that quantised (< 32-bit) uploads carry.")


class ChannelGreedyPolicy(RankPolicy):
    name = "channel-greedy"

    def ranks(self, observation: Observation) -> np.ndarray:
        deadline = observation.deadline_s if np.isfinite(observation.deadline_s) else self.config.deadline_s
        n, n_layers = observation.n_clients, observation.n_layers
        if not np.isfinite(deadline):
            return np.full((n, n_layers), observation.max_rank, dtype=np.int64)
        overhead = self.config.scale_bits * (2 * n_layers + 2) if observation.bits_per_param < 32 else 0
        budget_params = (observation.channel.rate_bps * deadline * self.config.margin - overhead) / observation.bits_per_param
        per_rank = float(np.sum(observation.params_per_rank))
        fitting = np.floor((budget_params - observation.fixed_params) / max(per_rank, 1.0))
        uniform = clip_ranks(np.nan_to_num(fitting, nan=0.0, posinf=observation.max_rank, neginf=0.0), observation.max_rank)
        return np.repeat(uniform[:, None], n_layers, axis=1)
