r"""Achievable rate with an SNR gap, and outage against a target rate.

.. math::
    R_k = B_k \log_2\!\left(1 + \frac{\bar\gamma_k\, |h_k|^2}{\Gamma}\right),\qquad
    \Gamma = 10^{\mathrm{gap_{dB}}/10}

(:math:`\Gamma = 1` is Shannon capacity; a practical code needs a few dB more). Latency of n bits
sent at rate R is :math:`t = n / R`; transmit energy is :math:`E = P\,t`.

Outage with a target rate :math:`R_0` (fixed-rate coding, no transmitter CSI): the update is lost
when :math:`R_k < R_0`. For Rayleigh fading and :math:`\Gamma = 1`:

.. math::
    P_{out} = \Pr\{B \log_2(1 + \bar\gamma g) < R_0\} = 1 - \exp\!\left(-\frac{2^{R_0/B} - 1}{\bar\gamma}\right).

The mean Rayleigh rate has the closed form
:math:`\mathbb E[R] = B\, e^{1/\bar\gamma}\, E_1(1/\bar\gamma) / \ln 2`.
"""

from __future__ import annotations

import numpy as np


def db_to_linear(db):
    return 10.0 ** (np.asarray(db, dtype=float) / 10.0)


def achievable_rate(bandwidth_hz, snr_db, fading_gain, gap_db: float = 0.0) -> np.ndarray:
    snr = db_to_linear(snr_db) * np.asarray(fading_gain, dtype=float) / db_to_linear(gap_db)
    return np.asarray(bandwidth_hz, dtype=float) * np.log2(1.0 + snr)


def rayleigh_mean_rate(bandwidth_hz: float, snr_db: float) -> float:
    from scipy.special import exp1

    inv = 1.0 / float(db_to_linear(snr_db))
    return float(bandwidth_hz * np.exp(inv) * exp1(inv) / np.log(2.0))


def rayleigh_outage_probability(target_rate_bps: float, bandwidth_hz: float, snr_db: float) -> float:
    return float(1.0 - np.exp(-(2.0 ** (target_rate_bps / bandwidth_hz) - 1.0) / db_to_linear(snr_db)))
