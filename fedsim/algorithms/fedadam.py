"""`fedadam`: FedAdam (Reddi et al. 2021, Algorithm 2), second moment

    v_t = beta_2 · v_{t-1} + (1 - beta_2) · Delta_t²

in the space and with the update of `fedsim.algorithms.fedopt.AdaptiveServerOptimizer`. Defaults:
beta_1 = 0.9, beta_2 = 0.99 (the paper's), tau = 1e-3 and eta = 1e-2 (inside the paper's tuned grids; its
best eta and tau depend on the task: tune them for yours).
"""

from __future__ import annotations

from typing import Literal

from fedsim.algorithms.fedopt import AdamLikeConfig, AdaptiveServerOptimizer


class FedAdamConfig(AdamLikeConfig):
    name: Literal["fedadam"] = "fedadam"


class FedAdam(AdaptiveServerOptimizer):
    name = "fedadam"

    def second_moment(self, v, squared):
        return self.config.beta_2 * v + (1.0 - self.config.beta_2) * squared
