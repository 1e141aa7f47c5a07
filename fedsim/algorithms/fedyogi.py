"""`fedyogi`: FedYogi (Reddi et al. 2021, Algorithm 2), second moment

    v_t = v_{t-1} - (1 - beta_2) · Delta_t² · sign(v_{t-1} - Delta_t²)

in the space and with the update of `fedsim.algorithms.fedopt.AdaptiveServerOptimizer`; defaults as FedAdam's.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from fedsim.algorithms.fedopt import AdamLikeConfig, AdaptiveServerOptimizer


class FedYogiConfig(AdamLikeConfig):
    name: Literal["fedyogi"] = "fedyogi"


class FedYogi(AdaptiveServerOptimizer):
    name = "fedyogi"

    def second_moment(self, v, squared):
        return v - (1.0 - self.config.beta_2) * squared * np.sign(v - squared)
