"""AWGN uplink with Shannon rate: the simplest metered channel."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from channels.base import Channel
from fedsim.types import ChannelStates, Transmission


class AWGNConfig(BaseModel):
    """Additive white Gaussian noise, no fading, the band split equally among the round's clients."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["awgn"] = "awgn"
    snr_db: float = Field(10.0, description="Received SNR of every client, in dB.")
    bandwidth_hz: float = Field(1e6, gt=0, description="Total uplink bandwidth shared (FDMA, equal split) by the round's clients.")
    tx_power_w: float = Field(0.2, gt=0, description="Client transmit power in watts; energy = power x airtime.")
    bits_per_param: Literal[32, 16, 8, 4] = Field(32, description="Bits per uploaded parameter.")
    downlink_bandwidth_hz: float = Field(10e6, gt=0, description="Downlink (server broadcast) bandwidth.")
    downlink_snr_db: float = Field(20.0, description="Downlink SNR in dB.")


class AWGNChannel(Channel):
    r"""Shannon-rate AWGN link.

    Per client k of the K scheduled clients, with total bandwidth B:

    .. math::
        B_k = B / K, \qquad R_k = B_k \log_2(1 + \mathrm{SNR}), \qquad
        t_k = \frac{n_k}{R_k}, \qquad E_k = P\, t_k

    Nothing is lost: without fading the rate is constant and every upload arrives.
    """

    def __init__(self, config: AWGNConfig):
        self.config = config
        self.bits_per_param = config.bits_per_param

    def draw(self, round: int, client_ids: np.ndarray, rng: np.random.Generator) -> ChannelStates:
        n = len(client_ids)
        share = np.full(n, self.config.bandwidth_hz / max(n, 1))
        snr_db = np.full(n, self.config.snr_db)
        rate = share * np.log2(1.0 + 10.0 ** (snr_db / 10.0))
        return ChannelStates(np.asarray(client_ids), snr_db, np.ones(n), share, rate)

    def uplink(self, states: ChannelStates, n_bits: np.ndarray, rng: np.random.Generator) -> list[Transmission]:
        latency = np.asarray(n_bits, dtype=float) / states.rate_bps
        return [
            Transmission(n_bits=int(b), latency_s=float(t), energy_j=float(self.config.tx_power_w * t), delivered=True)
            for b, t in zip(n_bits, latency)
        ]

    def downlink(self, states: ChannelStates, n_bits: np.ndarray) -> list[Transmission]:
        rate = self.config.downlink_bandwidth_hz * np.log2(1.0 + 10.0 ** (self.config.downlink_snr_db / 10.0))
        return [Transmission(n_bits=int(b), latency_s=float(b / rate), energy_j=0.0, delivered=True) for b in n_bits]
