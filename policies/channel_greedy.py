"""`channel-greedy`: per client, the largest uniform rank whose upload meets the deadline at its rate.

For client k with rate C_k and deadline T, the upload at uniform rank r costs

    bits(r) = (r · Σ_l p_l + p_fixed) · b + s · n_tensors

(p_l parameters per rank component of layer l, Fisher estimates and SCAFFOLD's copies included, p_fixed
the head, b bits per parameter, and, when b < 32, one s = 32-bit float scale per quantised tensor:
n_tensors = `Observation.upload_tensors`, 2 L + 2 for plain LoRA: A and B of L layers plus the head's two),
and the policy picks

    r_k = max { r in [0, max_rank] : bits(r) <= C_k · (T - s_k) · margin },

s_k the time its upload can start: after its local training (`channel.compute`), and under TDMA after the
previous client's slot, which sends its own r (`policies.common.fitting_rank`): no upload it sizes is late
but by HARQ resends. Over the air (AirComp) every client gets the one rank whose shared analog slot fits.

T is the observation's deadline (the channel's), else this policy's `deadline_s`; with
neither (inf), every client gets max_rank. A client that cannot fit even rank 0 gets 0.
(`policies.common.fitting_rank`; the learning policies send a learned share of the same rank.)
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedsim.types import Observation
from policies.base import RankPolicy, clip_ranks
from policies.common import fitting_rank


class ChannelGreedyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["channel-greedy"] = "channel-greedy"
    prices_uploads: ClassVar[bool] = True  # sizes ranks by the upload's bits on the channel (fitting_rank)
    deadline_s: float = Field(math.inf, gt=0, description="Upload deadline used when the channel sets none (inf = no deadline: max_rank).")
    margin: float = Field(1.0, gt=0, le=1, description="Use only this fraction of C·T, leaving headroom for fading and protocol overhead.")
    scale_bits: int = Field(32, ge=0, description="Bits of the per-tensor scale that quantised (< 32-bit) uploads carry.")


class ChannelGreedyPolicy(RankPolicy):
    name = "channel-greedy"

    def ranks(self, observation: Observation) -> np.ndarray:
        c = self.config
        fitting = fitting_rank(observation, deadline_s=c.deadline_s, margin=c.margin, scale_bits=c.scale_bits)
        return np.repeat(clip_ranks(fitting, observation.max_rank)[:, None], observation.n_layers, axis=1)
