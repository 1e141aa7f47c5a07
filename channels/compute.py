r"""Local computation time and energy, as in the wireless FL literature (e.g. Yang et al. 2021).

Client k processes :math:`S_k` samples at :math:`c` CPU cycles per sample on a CPU of frequency
:math:`f_k = f\, v_k`, where :math:`v_k = e^{\sigma Z_k}` (log-normal speed, fixed per client for
the run; :math:`\sigma` = ``speed_sigma``, 0 = all equal):

.. math::
    t^{comp}_k = \frac{c\, S_k}{f_k},\qquad E^{comp}_k = \kappa\, c\, S_k\, f_k^2 .
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class ComputeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Add local computation time and energy to each client's round.")
    cycles_per_sample: float = Field(1e8, gt=0, description="CPU cycles per training sample (c).")
    cpu_hz: float = Field(1e9, gt=0, description="Nominal client CPU frequency f (Hz).")
    kappa: float = Field(1e-28, ge=0, description="Effective switched capacitance: energy = kappa * cycles * f^2.")
    speed_sigma: float = Field(0.0, ge=0, description="Log-normal spread of per-client CPU speed (0 = identical clients).")


class ComputeModel:
    def __init__(self, config: ComputeConfig, seed: int):
        self.config = config
        self.seed = seed
        self._speed = np.zeros(0)

    def speeds(self, client_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(client_ids, dtype=np.int64)
        need = int(ids.max(initial=-1)) + 1
        while len(self._speed) < need:  # seeded blocks of clients: a client's speed never depends on the others
            rng = np.random.default_rng([self.seed, 7021, len(self._speed) // 256])
            self._speed = np.concatenate([self._speed, np.exp(self.config.speed_sigma * rng.standard_normal(256))])
        return self._speed[ids]

    def cost(self, client_ids: np.ndarray, samples: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(seconds, joules) of local training per client; zeros when disabled or samples unknown."""
        n = len(client_ids)
        if not self.config.enabled or samples is None:
            return np.zeros(n), np.zeros(n)
        cycles = self.config.cycles_per_sample * np.asarray(samples, dtype=float)
        freq = self.config.cpu_hz * self.speeds(client_ids)
        return cycles / freq, self.config.kappa * cycles * freq**2
