"""`fedyogi`: FedYogi (Reddi et al. 2021, Algorithm 2), second moment

    v_t = v_{t-1} - (1 - beta_2) · Delta_t² · sign(v_{t-1} - Delta_t²)

in the space and with the update of `fedsim.algorithms.fedopt.AdaptiveServerOptimizer`; defaults as FedAdam's.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedsim.algorithms.fedopt import AdaptiveServerOptimizer


class FedYogiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["fedyogi"] = "fedyogi"
    server_lr: float = Field(1e-2, gt=0, description="Server learning rate eta.")
    beta_1: float = Field(0.9, ge=0, lt=1, description="First-moment decay.")
    beta_2: float = Field(0.99, ge=0, lt=1, description="Second-moment decay.")
    tau: float = Field(1e-3, gt=0, description="Adaptivity tau: added to sqrt(v); v starts at tau².")


class FedYogi(AdaptiveServerOptimizer):
    name = "fedyogi"

    def second_moment(self, v, squared):
        return v - (1.0 - self.config.beta_2) * squared * np.sign(v - squared)
