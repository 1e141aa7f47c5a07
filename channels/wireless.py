r"""The composed wireless uplink: large-scale SNR x fading -> rate -> latency, energy, losses.

One round, for the K scheduled clients (each block's formula is in its module):

1. bandwidth share :math:`B_k` (`channels.access`), large-scale SNR :math:`\bar\gamma_k`
   (`channels.large_scale`), fading gain :math:`g_k = |h_k|^2` (`channels.fading`);
2. rate :math:`R_k = B_k \log_2(1 + \bar\gamma_k g_k / \Gamma)` (`channels.rate`);
3. the client sends :math:`n_k` bits (after quantisation, `channels.quantization`) in
   :math:`\lceil n_k / L\rceil` packets at :math:`R_k`, or at the target rate :math:`R_0` when one is set;
   airtime :math:`t_k = (n_k + r_k n_k / \lceil n_k/L\rceil) / R` with :math:`r_k` packets resent by
   HARQ (each resend charged at the same rate R), energy :math:`P\,t_k` plus optional compute time and
   energy (`channels.compute`) for the ``samples`` the strategy passes: its scheduled training for every
   client its train message reached, replied or not (``no-reply``, ``client-error``: how far it got is
   unknown), none for a ``no-node`` client, whose message was never sent;
4. the update is lost, in this order of blame, by ``outage`` (:math:`R_k < R_0`; nothing is resent),
   ``packet-error`` (the update, or one of its packets, still undecodable after the resends:
   ``packet_error`` model and ``harq`` in `channels.packet_error`) or ``deadline`` (computation plus
   upload ends after the round deadline; the transmission is cut off there, and ``retransmissions``
   counts only the resends aired before it). A client with nothing to send sends no packet.

In ``mode: aircomp`` steps 3-4 are replaced by analog superposition (`channels.aircomp`).
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from channels import access as access_block
from channels.aircomp import AirCompConfig, Superposition, carried_shapes, slot_seconds, superpose
from channels.base import Channel
from channels.blocks import ACCESS, FADING, LARGE_SCALE
from channels.compute import ComputeConfig, ComputeModel
from channels.large_scale import GeometryConfig, LargeScaleSNR
from channels.packet_error import HARQ, PACKET_ERROR, packet_count, send_update
from channels.presets import PRESETS, merge_preset
from channels.rate import achievable_rate, db_to_linear
from fedsim.types import ChannelStates, Transmission


class ChannelConfig(BaseModel):
    """The scenario's `channel:` section. `preset: NAME` fills defaults; fields written beside it win."""

    model_config = ConfigDict(extra="forbid")

    model: Literal["wireless"] = Field("wireless", description="The channel model (channels.registry); 'wireless' is this one.")
    preset: Optional[Literal[tuple(PRESETS)]] = Field(None, description=f"Named preset ({', '.join(PRESETS)}); explicit fields override it.")  # type: ignore[valid-type]
    mode: Literal["digital", "aircomp"] = Field("digital", description="'digital': separate metered uploads; 'aircomp': analog over-the-air superposition.")
    kind: Literal[tuple(FADING)] = Field("awgn", description="Small-scale fading: awgn (none), rayleigh, rician.")  # type: ignore[valid-type]
    k_factor: float = Field(5.0, ge=0, description="Rician K-factor (linear, >= 0; 0 = Rayleigh). Used by kind: rician.")
    correlation: float = Field(0.0, ge=0, le=1, description="Gauss-Markov correlation rho of fading between consecutive rounds (0 = independent).")
    snr_db: float = Field(
        10.0,
        description="Large-scale SNR in dB (fixed), or the centre of the uniform/normal spread; on whatever band share a client gets (only large_scale: distance rescales noise with the share).",
    )
    large_scale: Literal[LARGE_SCALE] = Field(
        "fixed", description="Per-client SNR: fixed, uniform (+-snr_spread_db), normal (std snr_spread_db), levels (one of snr_levels_db), distance (geometry)."
    )  # type: ignore[valid-type]
    snr_spread_db: float = Field(0.0, ge=0, description="Half-width (uniform) or std (normal) of the per-client SNR in dB.")
    snr_levels_db: list[float] = Field(default_factory=list, description="For large_scale: levels, the SNRs (dB) a client draws from, equally likely.")
    geometry: GeometryConfig = Field(default_factory=GeometryConfig, description="Placement and path loss for large_scale: distance.")
    bandwidth_hz: float = Field(1e6, gt=0, description="Total uplink bandwidth shared by the round's clients (Hz).")
    access: Literal[ACCESS] = Field("fdma-equal", description="fdma-equal, fdma-proportional (to data size), or tdma (full band, slots in random order).")  # type: ignore[valid-type]
    tx_power_w: float = Field(0.2, gt=0, description="Client transmit power (W); transmit energy = power x airtime.")
    snr_gap_db: float = Field(0.0, ge=0, description="SNR gap (coding loss) in dB: R = B log2(1 + SNR |h|^2 / gap).")
    target_rate_bps: Optional[float] = Field(
        None, gt=0, description="Fixed transmission rate; outage when the capacity is below it (null = rate adapts, no outage)."
    )
    deadline_s: Optional[float] = Field(None, gt=0, description="Round deadline for computation plus upload (s); later updates are dropped (null = none).")
    packet_error: Literal[PACKET_ERROR] = Field(  # type: ignore[valid-type]
        "none",
        description="Decoding errors (lost iff SNR < per_m): none; average (one codeword, Rayleigh average at the mean SNR); "
        "threshold (block fading: the round's fade for every packet); per-packet (independent fade per packet, fast fading).",
    )
    packet_bits: int = Field(12000, ge=1, description="Packet size in bits.")
    per_m: float = Field(0.023, gt=0, description="Decoding threshold m on the received SNR (linear) of the packet-error models.")
    harq_retransmissions: int = Field(
        0, ge=0, description="Resends allowed per lost codeword (the update, or a packet in per-packet) before the update is dropped."
    )
    harq: Literal[HARQ] = Field("time-diversity", description="time-diversity: each resend sees a new independent fade; chase: same fade, SNRs add.")  # type: ignore[valid-type]
    compute: ComputeConfig = Field(default_factory=ComputeConfig, description="Optional local computation time and energy.")
    aircomp: AirCompConfig = Field(default_factory=AirCompConfig, description="Over-the-air aggregation settings (mode: aircomp).")
    downlink_bandwidth_hz: float = Field(10e6, gt=0, description="Downlink (server broadcast) bandwidth (Hz).")
    downlink_snr_db: float = Field(20.0, description="Downlink SNR in dB (AWGN, never lost).")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        return merge_preset(data) if isinstance(data, dict) else data

    @field_validator("packet_error", mode="before")
    @classmethod
    def _packet_error_model(cls, value):
        if value is False:
            return "none"
        if value is True:
            raise ValueError("true no longer names a model: pick one of average|threshold|per-packet (false or none: no packet errors)")
        return value

    @model_validator(mode="after")
    def _levels_given(self):
        if self.large_scale == "levels" and not self.snr_levels_db:
            raise ValueError("large_scale: levels needs snr_levels_db, e.g. [-8, 0, 8]; allowed: a non-empty list of dB values")
        return self

    @model_validator(mode="after")
    def _digital_only_fields(self):
        """Over the air there is no codeword to lose or resend and no band to share: truncation plays outage's role."""
        if self.mode != "aircomp":
            return self
        digital = {"packet_error": "none", "target_rate_bps": None, "harq_retransmissions": 0, "snr_gap_db": 0.0, "access": "fdma-equal"}
        for name, allowed in digital.items():
            value = getattr(self, name)
            if value != allowed:
                source = f" (from preset {self.preset})" if self.preset and PRESETS[self.preset].get(name, allowed) == value else ""
                shown = "null" if allowed is None else allowed
                raise ValueError(
                    f"{name}={value}{source} is a digital-uplink setting that mode=aircomp does not model (truncation, "
                    f"aircomp.gain_threshold, plays outage's role); allowed with mode=aircomp: {name}: {shown}"
                )
        return self


class WirelessChannel(Channel):
    """Composes the blocks in `channels.blocks` as the module docstring says."""

    def __init__(self, config: ChannelConfig, seed: int = 0):
        self.config = config
        self.mode = config.mode
        self.deadline_s = float(config.deadline_s) if config.deadline_s is not None else math.inf
        self.large_scale = LargeScaleSNR(
            config.large_scale, config.snr_db, config.snr_spread_db, config.geometry, config.tx_power_w, seed, config.snr_levels_db
        )
        self.fading = FADING[config.kind](k_factor=config.k_factor, correlation=config.correlation)
        self.seed = seed
        self.compute = ComputeModel(config.compute, seed)
        self.data_sizes: np.ndarray | None = None
        self.sequential_uploads = self.mode == "digital" and access_block.is_sequential(config.access)

    def set_data_sizes(self, sizes) -> None:
        self.data_sizes = np.asarray(sizes, dtype=float)

    def compute_seconds(self, client_ids: np.ndarray, samples: np.ndarray) -> np.ndarray:
        return self.compute.cost(client_ids, samples)[0]

    # --- state -------------------------------------------------------------------------------
    def draw(self, round: int, client_ids: np.ndarray, rng: np.random.Generator) -> ChannelStates:
        ids = np.asarray(client_ids, dtype=np.int64)
        access = "tdma" if self.mode == "aircomp" else self.config.access  # AirComp: everyone on the whole band
        bandwidth = access_block.bandwidth_shares(access, self.config.bandwidth_hz, ids, self.data_sizes)
        snr_db = self.large_scale.draw(ids, bandwidth)
        gain = self.fading.draw(round, ids, rng)
        rate = achievable_rate(bandwidth, snr_db, gain, self.config.snr_gap_db)
        extra = {"distance_m": self.large_scale.distances(ids)} if self.config.large_scale == "distance" else {}
        target = self.config.target_rate_bps
        # The slot order from its own stream, so that it shifts no fading, loss or sampling draw.
        slot = access_block.slot_order(len(ids), np.random.default_rng([self.seed, 7031, round])) if self.sequential_uploads else None
        if slot is not None:
            extra["tdma_slot"] = slot  # clients.csv: its place in the round's slots, 0 first
        return ChannelStates(ids, snr_db, gain, bandwidth, rate, extra, None if target is None else np.full(len(ids), float(target)), slot)

    # --- digital uplink ------------------------------------------------------------------------
    def uplink(self, states: ChannelStates, n_bits: np.ndarray, rng: np.random.Generator, samples: np.ndarray | None = None) -> list[Transmission]:
        cfg = self.config
        n = len(states)
        bits = np.asarray(n_bits, dtype=float)
        packets = packet_count(bits, cfg.packet_bits)
        if cfg.target_rate_bps is not None:
            send_rate = np.full(n, float(cfg.target_rate_bps))
            outage = states.rate_bps < cfg.target_rate_bps
        else:
            send_rate = np.asarray(states.rate_bps, dtype=float)
            outage = np.zeros(n, dtype=bool)
        if cfg.packet_error != "none":
            retransmissions, lost = send_update(
                cfg.packet_error,
                cfg.harq,
                packets,
                db_to_linear(states.snr_db),
                states.fading_gain,
                cfg.per_m,
                cfg.harq_retransmissions,
                self.fading.cdf,
                rng,
            )
            retransmissions = np.where(outage, 0, retransmissions)  # in outage the update goes out once, fails, and is not resent
        else:
            retransmissions, lost = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        sends = bits > 0  # a client with nothing to send (no reply) puts no packet on the air
        with np.errstate(divide="ignore", invalid="ignore"):
            packet_s = np.where(sends, bits / packets / send_rate, 0.0)
            airtime = np.where(sends, (bits + retransmissions * bits / packets) / send_rate, 0.0)
        compute_s, compute_j = self.compute.cost(states.client_ids, samples)
        starts = access_block.slot_starts(compute_s, airtime, self._slots(states))
        late = starts + airtime > self.deadline_s
        airtime = np.where(late, np.clip(self.deadline_s - starts, 0.0, None), airtime)  # cut off at the deadline
        unsent = sends & late & (airtime <= 0)  # its slot or its training ended at the deadline: nothing went on the air
        with np.errstate(divide="ignore", invalid="ignore"):
            # Only the resends that went out before the cut-off: those after the first pass, whole packets (1e-9: rounding).
            aired_resends = np.floor((airtime - bits / send_rate) / packet_s + 1e-9)
        retransmissions = np.where(late, np.clip(np.nan_to_num(aired_resends, nan=0.0), 0, retransmissions), retransmissions).astype(np.int64)
        packets = np.where(sends & ~unsent, packets, 0)
        retransmissions = np.where(sends & ~unsent, retransmissions, 0)
        reasons = np.where(unsent, "deadline", np.where(outage, "outage", np.where(lost, "packet-error", np.where(late, "deadline", ""))))
        return [
            Transmission(
                n_bits=0 if unsent[k] else int(bits[k]),
                latency_s=float(airtime[k]),
                energy_j=float(cfg.tx_power_w * airtime[k] + compute_j[k]),
                delivered=not reasons[k],
                drop_reason=str(reasons[k]),
                packets=int(packets[k]),
                retransmissions=int(retransmissions[k]),
                compute_s=float(compute_s[k]),
                compute_energy_j=float(compute_j[k]),
                start_s=float(starts[k]),
            )
            for k in range(n)
        ]

    def _slots(self, states: ChannelStates) -> np.ndarray | None:
        """The TDMA slot places of `states` (client order where a caller built states without them); None for FDMA."""
        if not self.sequential_uploads:
            return None
        return states.slot if states.slot is not None else np.arange(len(states))

    def round_latency(self, transmissions: list[Transmission]) -> float:
        """When the round's uplink ends. Digital: the last upload's end (its slot start plus airtime), at most the deadline. AirComp: the shared
        slot starts after the slowest computation of every scheduled client, since the server cannot know beforehand who
        will stay silent (as `superpose` decides lateness), and ends one slot later; with nobody sending, the round ends
        at the deadline when the slot would have overrun it, else when the last computation ends."""
        if not transmissions:
            return 0.0
        compute = np.array([t.compute_s for t in transmissions])
        airtime = np.array([t.latency_s for t in transmissions])
        if self.mode == "aircomp":
            if airtime.max() > 0:  # every sender's airtime is the one shared slot
                return float(compute.max() + airtime.max())
            late = any(t.drop_reason == "deadline" for t in transmissions)
            return float(self.deadline_s if late else compute.max())
        # A training or a slot that runs past the deadline ends the round there: the server stops listening.
        return float(min(max((t.compute_s if t.start_s is None else t.start_s) + t.latency_s for t in transmissions), self.deadline_s))

    def downlink(self, states: ChannelStates, n_bits: np.ndarray) -> list[Transmission]:
        rate = float(achievable_rate(self.config.downlink_bandwidth_hz, self.config.downlink_snr_db, 1.0))
        return [Transmission(n_bits=int(b), latency_s=float(b / rate), energy_j=0.0, delivered=True) for b in n_bits]

    # --- over-the-air aggregation --------------------------------------------------------------
    def superpose(
        self,
        updates: list[dict[str, np.ndarray] | None],
        weights: np.ndarray,
        states: ChannelStates,
        rng: np.random.Generator,
        shapes: dict[str, tuple[int, ...]],
        samples: np.ndarray | None = None,
        bits_per_param: int = 32,
    ) -> tuple[list[Transmission], Superposition]:
        """AirComp round: who transmits (truncation, deadline), what each spends (its inversion power x slot), and the noisy
        aggregate, of the full `shapes` (padded to max_rank). The slot carries the entries the clients that would send
        span (`channels.aircomp.carried_shapes`). A sender's `n_bits` is those entries at `bits_per_param`; nothing
        reads it: the ledger charges each sender its own digitally encoded upload."""
        cfg = self.config
        n = len(states)
        compute_s, compute_j = self.compute.cost(states.client_ids, samples)
        present = np.array([u is not None for u in updates], dtype=bool)
        truncated = states.fading_gain < cfg.aircomp.gain_threshold
        carried = carried_shapes(updates, present & ~truncated, shapes)
        slot = slot_seconds(carried, cfg.bandwidth_hz)
        late = compute_s.max(initial=0.0) + slot > self.deadline_s  # one shared slot after the slowest computation
        senders = present & ~truncated & ~late
        result = superpose(updates, weights, states.snr_db, states.fading_gain, senders, shapes, cfg.aircomp.noise, rng, carried)
        power = cfg.tx_power_w * result.power_fraction  # channel inversion: p_k = P_max c^2 w_k^2 m_k / gamma_k
        bits = np.array([sum(int(np.prod(s)) for s in carried.values()) * bits_per_param] * n)
        reasons = np.where(truncated, "aircomp-truncated", np.where(late, "deadline", ""))
        transmissions = [
            Transmission(
                n_bits=int(bits[k]) if senders[k] else 0,
                latency_s=slot if senders[k] else 0.0,
                energy_j=float(power[k] * slot + compute_j[k]),
                delivered=bool(senders[k]),
                drop_reason=str(reasons[k]),
                packets=0,
                retransmissions=0,
                compute_s=float(compute_s[k]),
                compute_energy_j=float(compute_j[k]),
            )
            for k in range(n)
        ]
        return transmissions, result
