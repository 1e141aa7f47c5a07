"""`fedadam`: FedAdam (Reddi et al. 2021, Algorithm 2), second moment

    v_t = beta_2 · v_{t-1} + (1 - beta_2) · Delta_t²

in the space and with the update of `fedsim.algorithms.fedopt.AdaptiveServerOptimizer`. Defaults:
beta_1 = 0.9, beta_2 = 0.99 (the paper's), tau = 1e-3 and eta = 1e-2 (inside the paper's tuned grids; its
best eta and tau depend on the task: tune them for yours).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fedsim.algorithms.fedopt import AdaptiveServerOptimizer


class FedAdamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["fedadam"] = "fedadam"
    server_lr: float = Field(1e-2, gt=0, description="Server learning rate eta.")
    beta_1: float = Field(0.9, ge=0, lt=1, description="First-moment decay.")
    beta_2: float = Field(0.99, ge=0, lt=1, description="Second-moment decay.")
    tau: float = Field(1e-3, gt=0, description="Adaptivity tau: added to sqrt(v); v starts at tau².")


class FedAdam(AdaptiveServerOptimizer):
    name = "fedadam"

    def second_moment(self, v, squared):
        return self.config.beta_2 * v + (1.0 - self.config.beta_2) * squared
