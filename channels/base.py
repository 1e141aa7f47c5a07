"""The `Channel` seam: what the simulator asks of any uplink model.

A channel draws the per-round state of the selected clients, then meters each
upload: latency, energy, and whether it arrived. In AirComp mode it superposes
the updates instead. New models subclass `Channel` and add one line to
`channels.registry.CHANNELS`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from fedsim.types import ChannelStates, Transmission


class Channel(ABC):
    """Base class of uplink models.

    The bits metered are those of the arrays the client sent, encoded as the scenario's `quantization:`
    section says (`channels.quantization`), apart from the radio.
    `mode` is 'digital' or 'aircomp'; `deadline_s` is the round deadline (inf if none).
    """

    mode: str = "digital"
    deadline_s: float = math.inf
    sequential_uploads: bool = False  # uploads one after another in the order `ChannelStates.slot` gives (TDMA)

    @abstractmethod
    def draw(self, round: int, client_ids: np.ndarray, rng: np.random.Generator) -> ChannelStates:
        """This round's state (SNR, fading, bandwidth share, rate) for the selected clients."""

    @abstractmethod
    def uplink(self, states: ChannelStates, n_bits: np.ndarray, rng: np.random.Generator, samples: np.ndarray | None = None) -> list[Transmission]:
        """Meter one upload per client (aligned with `states`): latency, energy, delivered or dropped.

        `samples`: training samples each client processed, for the optional compute cost.
        """

    @abstractmethod
    def downlink(self, states: ChannelStates, n_bits: np.ndarray) -> list[Transmission]:
        """Meter the broadcast of the global adapter to each client. Never dropped."""

    def compute_seconds(self, client_ids: np.ndarray, samples: np.ndarray) -> np.ndarray:
        """Local training time before each client's upload (what `uplink` adds for `samples`); none by default."""
        return np.zeros(len(client_ids))

    def set_data_sizes(self, sizes) -> None:
        """Clients' data sizes (indexed by client id), for access schemes that share the band by data size."""

    def superpose(self, updates, weights, states, rng, shapes, samples=None, bits_per_param=32):
        """AirComp: (transmissions, `channels.aircomp.Superposition`). Only channels with `mode = 'aircomp'`."""
        raise NotImplementedError(f"{type(self).__name__} has no over-the-air aggregation")

    def round_latency(self, transmissions: list[Transmission]) -> float:
        """Uplink latency of the whole round. FDMA default: clients send in parallel, so the slowest decides."""
        return max((t.compute_s + t.latency_s for t in transmissions), default=0.0)
