"""`fedavgm`: FedAvg with server momentum (Hsu, Qi, Brown 2019, "Measuring the Effects of Non-Identical
Data Distribution for Federated Visual Classification"), in the space `fedsim.algorithms.fedopt` describes:

    v_t = beta · v_{t-1} + Delta_t,    x_{t+1} = x_t + eta · v_t

(Flower's FedAvgM, with its pseudo-gradient's sign flipped). beta = 0 and eta = 1 is FedAvg exactly.
Hsu et al. use beta = 0.9 with eta = 1 - beta or 1; the defaults here are beta = 0.9, eta = 1.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fedsim.algorithms.fedopt import ServerOptimizer


class FedAvgMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["fedavgm"] = "fedavgm"
    server_lr: float = Field(1.0, gt=0, description="Server learning rate eta.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Server momentum beta (0 with server_lr 1 = FedAvg).")


class FedAvgM(ServerOptimizer):
    name = "fedavgm"

    def step(self, delta):
        steps = {}
        for key, d in delta.items():
            velocity = self.config.momentum * self.moment("velocity", key, d) + d
            self.moments["velocity"][key] = velocity
            steps[key] = self.config.server_lr * velocity
        return steps
