r"""Packet errors and HARQ retransmissions.

Per-packet error rate at instantaneous SNR :math:`\gamma = P h / N` (waterfall model, m = 0.023 by default):

.. math::
    \mathrm{PER}(\gamma) = 1 - \exp\!\left(-\frac{m\,N}{P\,h}\right) = 1 - \exp(-m / \gamma).

Its mean over Rayleigh fading (:math:`\gamma = \bar\gamma g`, :math:`g \sim \mathrm{Exp}(1)`) is
:math:`1 - \int_0^\infty e^{-m/(\bar\gamma g)} e^{-g} dg = 1 - 2\sqrt{a}\,K_1(2\sqrt a)`, :math:`a = m/\bar\gamma`.

An upload of n bits is split into :math:`\lceil n / L \rceil` packets of L bits; within a round the
channel is constant (block fading) and packets fail independently with the same PER. A failed packet
is resent up to ``harq_retransmissions`` times; the update is dropped if any packet is still lost, and
every resend costs airtime and energy.
"""

from __future__ import annotations

import numpy as np


def packet_error_rate(snr_linear, m: float = 0.023) -> np.ndarray:
    snr = np.asarray(snr_linear, dtype=float)
    with np.errstate(divide="ignore"):
        return -np.expm1(-m / snr)


def packet_count(n_bits, packet_bits: int) -> np.ndarray:
    return np.maximum(np.ceil(np.asarray(n_bits, dtype=float) / packet_bits), 1).astype(np.int64)


def send_packets(packets: np.ndarray, per: np.ndarray, max_retransmissions: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Simulate ARQ: returns (retransmitted packets, lost flag) per client."""
    failed = rng.binomial(packets, per)
    retransmissions = np.zeros(len(packets), dtype=np.int64)
    for _ in range(max_retransmissions):
        retransmissions += failed
        failed = rng.binomial(failed, per)
    return retransmissions, failed > 0
