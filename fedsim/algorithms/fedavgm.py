"""`fedavgm`: FedAvg with server momentum (Hsu, Qi, Brown 2019, "Measuring the Effects of Non-Identical
Data Distribution for Federated Visual Classification"), in the space `fedsim.algorithms.fedopt` describes:

    v_t = beta · v_{t-1} + Delta_t,    x_{t+1} = x_t + eta · v_t

(Flower's FedAvgM, with its pseudo-gradient's sign flipped). beta = 0 and eta = 1 is FedAvg exactly.
In a steady state the step is eta / (1 - beta) times Delta (Hsu et al.'s "effective learning rate"); the
defaults beta = 0.9, eta = 0.1 keep FedAvg's effective step and add the momentum's smoothing (Flower's own
defaults, beta = 0 and eta = 1, are plain FedAvg).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fedsim.algorithms.fedopt import ServerOptimizer


class FedAvgMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["fedavgm"] = "fedavgm"
    server_lr: float = Field(0.1, gt=0, description="Server learning rate eta (the effective step is eta / (1 - momentum)).")
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
