r"""Small-scale fading :math:`g = |h|^2`, drawn per client per round, unit mean power.

* ``awgn``:     :math:`h = 1`.
* ``rayleigh``: :math:`h \sim \mathcal{CN}(0, 1)`, so :math:`|h|^2 \sim \mathrm{Exp}(1)`.
* ``rician``:   :math:`h = \sqrt{K/(K+1)}\,e^{j\phi} + \sqrt{1/(K+1)}\,w`, :math:`w \sim \mathcal{CN}(0,1)`;
  :math:`\mathbb E|h|^2 = 1` for every K-factor (linear) K >= 0; K = 0 is Rayleigh.

Block-correlated fading across rounds (``correlation`` :math:`\rho`, Gauss-Markov /
first-order autoregressive model of Jakes' spectrum, :math:`\rho = J_0(2\pi f_D T)`):
the scattered part of a client picked at round t whose previous draw was at round t' evolves as

.. math::
    w_t = \rho^{\,t-t'}\, w_{t'} + \sqrt{1 - \rho^{2(t-t')}}\; e_t,\qquad e_t \sim \mathcal{CN}(0,1),

which keeps :math:`w_t \sim \mathcal{CN}(0,1)` marginally. :math:`\rho = 0` is i.i.d. block fading.
"""

from __future__ import annotations

import numpy as np


class Fading:
    """Base: draws |h|^2 for `client_ids` at `round`; keeps the scattered component for correlation."""

    line_of_sight_power = 0.0  # K / (K + 1)

    def __init__(self, k_factor: float = 0.0, correlation: float = 0.0):
        self.k_factor = k_factor
        self.correlation = correlation
        self._last_w: dict[int, tuple[int, complex]] = {}

    def _scattered(self, round: int, client_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(client_ids)
        fresh = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) / np.sqrt(2.0)
        if self.correlation <= 0.0:
            return fresh
        w = fresh.copy()
        for k, client in enumerate(client_ids):
            previous = self._last_w.get(int(client))
            if previous is not None:
                rho = self.correlation ** max(round - previous[0], 0)
                w[k] = rho * previous[1] + np.sqrt(1.0 - rho**2) * fresh[k]
            self._last_w[int(client)] = (round, complex(w[k]))
        return w

    def draw(self, round: int, client_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class NoFading(Fading):
    """AWGN: |h|^2 = 1, no randomness used."""

    def draw(self, round, client_ids, rng):
        return np.ones(len(client_ids))


class RayleighFading(Fading):
    """|h|^2 ~ Exp(1)."""

    def draw(self, round, client_ids, rng):
        return np.abs(self._scattered(round, client_ids, rng)) ** 2


class RicianFading(Fading):
    """Line of sight with power K/(K+1) plus CN(0, 1/(K+1)) scatter; E|h|^2 = 1."""

    def draw(self, round, client_ids, rng):
        k = self.k_factor
        w = self._scattered(round, client_ids, rng)
        phase = rng.uniform(0.0, 2.0 * np.pi, len(client_ids))
        h = np.sqrt(k / (k + 1.0)) * np.exp(1j * phase) + np.sqrt(1.0 / (k + 1.0)) * w
        return np.abs(h) ** 2
