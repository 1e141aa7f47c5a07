r"""Packet errors and HARQ retransmissions (``channel.packet_error``, ``harq``, ``harq_retransmissions``).

*Decoding model* (waterfall / threshold, Chen et al., "A Joint Learning and Communications Framework
for Federated Learning over Wireless Networks", IEEE TWC 2021, m = 0.023 by default): a codeword is
lost iff the SNR at which it is received is below m. The paper's Table I prints 0.023 with a dB unit; m is
read here, as in public reimplementations, as a linear ratio (-16.4 dB); the dB reading is ``per_m: 1.0053``. The SNR is the large-scale SNR
:math:`\bar\gamma` (path loss, shadowing, configured ``snr_db``) times the fading gain g,
:math:`\gamma = \bar\gamma g`. m is itself the decoding threshold on the received SNR, so the SNR
gap of the rate model (``snr_gap_db``, a coding loss relative to capacity) is not applied again.
An upload of n bits is :math:`\lceil n/L\rceil` packets of L bits (``packet_bits``).

Models (``packet_error``):

* ``none``: nothing is lost to decoding errors.
* ``average`` (Chen et al.'s convention): the whole update is one codeword, lost with the Rayleigh
  average of the threshold model at the mean SNR,

  .. math:: p = \Pr\{\bar\gamma g < m\} = 1 - e^{-m/\bar\gamma},\qquad g \sim \mathrm{Exp}(1),

  drawn from a fade g independent of the round's fading draw (which still sets the rate).
* ``threshold`` (block fading): every packet of an update sees the round's fading draw
  :math:`g_k`, so the update is lost iff :math:`\bar\gamma_k g_k < m`. Over Rayleigh fading the loss
  probability is again :math:`1 - e^{-m/\bar\gamma}`, whatever the number of packets.
* ``per-packet`` (fast fading within an upload): each packet sees an independent fade from the
  channel's fading distribution :math:`F(x) = \Pr\{g < x\}` (`channels.fading`: Rayleigh
  :math:`1 - e^{-x}`, Rician noncentral chi-square, AWGN deterministic), so a packet is lost with
  :math:`p = F(m/\bar\gamma)` and an update of n packets with :math:`1 - (1 - p)^n`. Only valid when the
  coherence time is shorter than a packet train: the round's single fading draw (which sets the rate)
  then stands for the channel's average state, not for what each packet sees.

*HARQ* (``harq_retransmissions`` N resends, ``harq``): a lost codeword (the whole update for
``average``/``threshold``, one packet for ``per-packet``) is sent again, up to N times.

* ``time-diversity``: each resend sees a new independent fade (the resend comes after the
  coherence time), lost with :math:`p` as above. A codeword is lost with :math:`p_1 p^N` (:math:`p_1`:
  the first attempt, :math:`p_1 = p` in distribution), e.g. :math:`(1 - e^{-m/\bar\gamma})^{N+1}` for
  Rayleigh; ``per-packet`` loses an update with :math:`1 - (1 - p^{N+1})^n`.
* ``chase``: chase combining within one block fade: the resends see the same fade and the receiver
  adds their SNRs, so after n transmissions the SNR is :math:`n\gamma`. A codeword is lost iff
  :math:`(N+1)\gamma < m` (Rayleigh: :math:`1 - e^{-m/((N+1)\bar\gamma)}`) and uses the smallest n
  with :math:`n\gamma \ge m` transmissions (N + 1 when lost). In ``per-packet`` each packet has its
  own fade and is combined with its own resends.

Every resend costs airtime and energy: ``retransmissions`` counts the packets resent (a whole-update
resend is all its packets); `channels.wireless` charges them at the round's send rate.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

PACKET_ERROR = ("none", "average", "threshold", "per-packet")
HARQ = ("time-diversity", "chase")


def packet_error_rate(snr_linear, m: float = 0.023) -> np.ndarray:
    r"""Rayleigh-averaged loss of one codeword at mean SNR :math:`\bar\gamma`: :math:`1 - e^{-m/\bar\gamma}`."""
    snr = np.asarray(snr_linear, dtype=float)
    with np.errstate(divide="ignore"):
        return -np.expm1(-m / snr)


def packet_count(n_bits, packet_bits: int) -> np.ndarray:
    return np.maximum(np.ceil(np.asarray(n_bits, dtype=float) / packet_bits), 1).astype(np.int64)


def send_update(
    model: str,
    harq: str,
    packets: np.ndarray,
    mean_snr: np.ndarray,
    fading_gain: np.ndarray,
    m: float,
    max_retransmissions: int,
    cdf: Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(packets resent, lost flag) per client under `model` and `harq` (see the module docstring).

    `mean_snr`: large-scale SNR (linear); `fading_gain`: the round's draw (used by ``threshold``);
    `cdf`: the fading distribution's Pr{g < x} (``per-packet`` and time-diversity resends).
    """
    packets = np.asarray(packets, dtype=np.int64)
    n = len(packets)
    mean_snr = np.asarray(mean_snr, dtype=float)
    if model == "none":
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    with np.errstate(divide="ignore"):
        x = m / mean_snr  # a codeword at gain g is lost iff g < x
    if model == "per-packet":
        return _per_packet(harq, packets, x, max_retransmissions, cdf, rng)
    if model == "average":
        gain, resend_cdf = rng.exponential(1.0, n), (lambda y: -np.expm1(-y))
    elif model == "threshold":
        gain, resend_cdf = np.asarray(fading_gain, dtype=float), cdf
    else:
        raise ValueError(f"unknown packet_error model {model!r}; allowed: {', '.join(PACKET_ERROR)}")
    if harq == "chase":
        with np.errstate(divide="ignore", invalid="ignore"):
            needed = np.ceil(x / gain)  # smallest n with n * snr * g >= m
        needed = np.where(np.isfinite(needed), np.maximum(needed, 1.0), np.inf)
        lost = needed > max_retransmissions + 1
        resends = (np.minimum(needed, max_retransmissions + 1) - 1).astype(np.int64)
        return resends * packets, lost
    failed = gain < x
    resends = np.zeros(n, dtype=np.int64)
    p = resend_cdf(x)
    for _ in range(max_retransmissions):
        resends += failed
        failed = failed & (rng.random(n) < p)
    return resends * packets, failed


def _per_packet(harq, packets, x, max_retransmissions, cdf, rng):
    # Nested binomials draw the exact distribution of how many packets are still lost after each
    # attempt without sampling one fade per packet.
    p1 = np.asarray(cdf(x), dtype=float)
    failed = rng.binomial(packets, p1)
    resends = np.zeros(len(packets), dtype=np.int64)
    previous = p1
    for attempt in range(2, max_retransmissions + 2):
        resends += failed
        if harq == "chase":
            # Still lost after `attempt` combined copies iff g < x / attempt, a subset of g < x / (attempt - 1).
            current = np.asarray(cdf(x / attempt), dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                keep = np.where(previous > 0, current / previous, 0.0)
            previous = current
        else:
            keep = p1
        failed = rng.binomial(failed, np.clip(keep, 0.0, 1.0))
    return resends, failed > 0
