"""`fedadagrad`: FedAdagrad (Reddi et al. 2021, Algorithm 2), second moment

    v_t = v_{t-1} + Delta_t²

in the space and with the update of `fedsim.algorithms.fedopt.AdaptiveServerOptimizer` (the paper keeps
the first moment beta_1 here too; beta_1 = 0 gives Flower's FedAdagrad without its bias terms).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fedsim.algorithms.fedopt import AdaptiveServerOptimizer


class FedAdagradConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["fedadagrad"] = "fedadagrad"
    server_lr: float = Field(1e-2, gt=0, description="Server learning rate eta.")
    beta_1: float = Field(0.9, ge=0, lt=1, description="First-moment decay.")
    tau: float = Field(1e-3, gt=0, description="Adaptivity tau: added to sqrt(v); v starts at tau².")


class FedAdagrad(AdaptiveServerOptimizer):
    name = "fedadagrad"

    def second_moment(self, v, squared):
        return v + squared
