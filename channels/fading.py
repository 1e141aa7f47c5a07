r"""Small-scale fading :math:`g = |h|^2`, drawn per client per round, unit mean power.

* ``awgn``:     :math:`h = 1`.
* ``rayleigh``: :math:`h \sim \mathcal{CN}(0, 1)`, so :math:`|h|^2 \sim \mathrm{Exp}(1)`,
  :math:`\Pr\{g < x\} = 1 - e^{-x}`.
* ``rician``:   :math:`h = \mu + \sigma w`, :math:`|\mu|^2 = K/(K+1)`, :math:`\mu = |\mu| e^{j\phi}`,
  :math:`\sigma^2 = 1/(K+1)`, :math:`w \sim \mathcal{CN}(0,1)`; :math:`\mathbb E|h|^2 = 1` for every
  K-factor (linear) K >= 0; K = 0 is Rayleigh. :math:`2(K+1)\,g` is noncentral chi-square with 2
  degrees of freedom and noncentrality 2K, so
  :math:`\Pr\{g < x\} = F_{\chi'^2_2(2K)}\big(2(K+1)x\big)` (:meth:`Fading.cdf`).

Block-correlated fading across rounds (``correlation`` :math:`\rho`, Gauss-Markov /
first-order autoregressive model of Jakes' spectrum, :math:`\rho = J_0(2\pi f_D T)`):
the scattered part of a client picked at round t whose previous draw was at round t' evolves as

.. math::
    w_t = \rho^{\,t-t'}\, w_{t'} + \sqrt{1 - \rho^{2(t-t')}}\; e_t,\qquad e_t \sim \mathcal{CN}(0,1),

which keeps :math:`w_t \sim \mathcal{CN}(0,1)` marginally. :math:`\rho = 0` is i.i.d. block fading.

With :math:`\rho > 0` the line-of-sight phase :math:`\phi` of a Rician client is fixed: drawn once,
uniform on :math:`[0, 2\pi)` from the channel's generator the first time the client is seen, then
kept (a client that does not move keeps its direct path; only the scatter evolves). The power of
consecutive rounds is then correlated as

.. math::
    \mathrm{corr}(|h_t|^2, |h_{t+1}|^2) = \frac{2\sigma^2|\mu|^2\rho + \sigma^4\rho^2}{2\sigma^2|\mu|^2 + \sigma^4}

(0.8918 at :math:`\rho = 0.9`, K = 5; redrawing :math:`\phi` every round would leave only the
:math:`\sigma^4\rho^2` term in the numerator, 0.074). With :math:`\rho = 0` the phase is drawn afresh every round,
which has the same distribution.
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

    def cdf(self, x) -> np.ndarray:
        r"""Marginal :math:`\Pr\{|h|^2 < x\}` (packet-error models, `channels.packet_error`)."""
        raise NotImplementedError


class NoFading(Fading):
    """AWGN: |h|^2 = 1, no randomness used."""

    def draw(self, round, client_ids, rng):
        return np.ones(len(client_ids))

    def cdf(self, x):
        return (np.asarray(x, dtype=float) > 1.0).astype(float)


class RayleighFading(Fading):
    """|h|^2 ~ Exp(1)."""

    def draw(self, round, client_ids, rng):
        return np.abs(self._scattered(round, client_ids, rng)) ** 2

    def cdf(self, x):
        return -np.expm1(-np.clip(np.asarray(x, dtype=float), 0.0, None))


class RicianFading(Fading):
    """Line of sight with power K/(K+1) plus CN(0, 1/(K+1)) scatter; E|h|^2 = 1."""

    def __init__(self, k_factor: float = 0.0, correlation: float = 0.0):
        super().__init__(k_factor, correlation)
        self._phase: dict[int, float] = {}

    def _line_of_sight_phase(self, client_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.correlation <= 0.0:  # independent rounds: a fresh phase has the same distribution (and keeps old ledgers)
            return rng.uniform(0.0, 2.0 * np.pi, len(client_ids))
        new = [int(c) for c in dict.fromkeys(int(c) for c in client_ids) if int(c) not in self._phase]
        for client, phase in zip(new, rng.uniform(0.0, 2.0 * np.pi, len(new))):
            self._phase[client] = float(phase)
        return np.array([self._phase[int(c)] for c in client_ids])

    def draw(self, round, client_ids, rng):
        k = self.k_factor
        w = self._scattered(round, client_ids, rng)
        phase = self._line_of_sight_phase(client_ids, rng)
        h = np.sqrt(k / (k + 1.0)) * np.exp(1j * phase) + np.sqrt(1.0 / (k + 1.0)) * w
        return np.abs(h) ** 2

    def cdf(self, x):
        from scipy.stats import ncx2

        k = float(self.k_factor)
        x = np.clip(np.asarray(x, dtype=float), 0.0, None)
        if k == 0.0:
            return -np.expm1(-x)
        return ncx2.cdf(2.0 * (k + 1.0) * x, 2, 2.0 * k)
