"""`fixed`: the same rank for every client, per layer if a `ranks:` list is given."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedsim.types import Observation
from policies.base import RankPolicy, clip_ranks


class FixedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["fixed"] = "fixed"
    rank: int = Field(8, ge=0, description="Rank of every adapted layer (at most adapter.max_rank).")
    ranks: list[int] | None = Field(None, description="Optional rank per adapted layer; overrides `rank`.")


class FixedPolicy(RankPolicy):
    name = "fixed"

    def ranks(self, observation: Observation) -> np.ndarray:
        per_layer = np.asarray(self.config.ranks) if self.config.ranks is not None else np.full(observation.n_layers, self.config.rank)
        return clip_ranks(np.tile(per_layer, (observation.n_clients, 1)), observation.max_rank)
