"""The `Channel` seam: what the simulator asks of any uplink model.

A channel draws the per-round state of the selected clients, then meters each
upload: latency, energy, and whether it arrived. New models subclass `Channel`
and add one line to `channels.registry.CHANNELS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from fedsim.types import ChannelStates, Transmission


class Channel(ABC):
    """Base class of uplink models.

    `bits_per_param` is the payload precision: an upload of N parameters is
    N * bits_per_param bits (plus whatever a quantiser adds, counted by the caller).
    """

    bits_per_param: int = 32

    @abstractmethod
    def draw(self, round: int, client_ids: np.ndarray, rng: np.random.Generator) -> ChannelStates:
        """This round's state (SNR, fading, bandwidth share, rate) for the selected clients."""

    @abstractmethod
    def uplink(self, states: ChannelStates, n_bits: np.ndarray, rng: np.random.Generator) -> list[Transmission]:
        """Meter one upload per client (aligned with `states`): latency, energy, delivered or dropped."""

    @abstractmethod
    def downlink(self, states: ChannelStates, n_bits: np.ndarray) -> list[Transmission]:
        """Meter the broadcast of the global adapter to each client. Never dropped."""

    def round_latency(self, transmissions: list[Transmission]) -> float:
        """Uplink latency of the whole round. FDMA default: clients send in parallel, so the slowest decides."""
        return max((t.latency_s for t in transmissions), default=0.0)
