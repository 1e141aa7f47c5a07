"""Stages `record` and `feedback`: the round's ledger rows (rounds.csv, clients.csv) and what a
learning policy's reward needs (`policies.common.round_reward`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

NO_NODE = "no-node"  # no SuperNode served the client: its message was never sent


def drop_reason(delivered: bool, client: int, replies, tx, finite: bool, has_node: bool = True) -> str:
    """Why a client's update did not reach the aggregate ("" when it did)."""
    if delivered:
        return ""
    if not has_node:
        return NO_NODE
    if client in replies.errors:
        return "client-error"
    if client not in replies.received:
        return "no-reply"
    if not tx.delivered and tx.drop_reason:
        return tx.drop_reason
    return "non-finite" if not finite else tx.drop_reason


class LedgerRow:
    """A record's CSV row: its fields in order (but `extra`), then the `extra` columns."""

    def as_row(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"} | self.extra


@dataclass
class ClientRecord(LedgerRow):
    """One client's row of clients.csv for one round. `extra` holds the columns that only some runs have
    (a channel block's state, the Flower engine's wire bytes, a client's error text); they follow the fixed
    columns in the ledger, in the order they first appear."""

    round: int
    client: int
    ranks: str  # per-layer ranks, space-separated
    mean_rank: float
    params_up: int
    bytes_up: int
    bytes_down: int
    bytes_up_adapter: int
    bytes_up_fisher: int
    bytes_up_control: int
    bytes_up_activations: int
    bytes_down_gradients: int
    snr_db: float
    fading_gain: float
    bandwidth_hz: float
    rate_bps: float
    latency_s: float
    energy_j: float
    delivered: int
    drop_reason: str
    packets: int
    retransmissions: int
    compute_s: float
    compute_energy_j: float
    num_examples: int
    train_loss: float
    extra: dict = field(default_factory=dict)


@dataclass
class RoundRecord(LedgerRow):
    """The round's training and upload columns of rounds.csv (evaluation adds accuracy and loss); `extra`
    as in `ClientRecord` (availability, AirComp errors, wire bytes)."""

    round: int
    bytes_up: int
    bytes_down: int
    bytes_up_adapter: int
    bytes_up_fisher: int
    bytes_up_control: int
    bytes_up_activations: int
    bytes_down_gradients: int
    cum_bytes_up: int
    cum_bytes_down: int
    uplink_latency_s: float
    downlink_latency_s: float
    energy_j: float
    mean_rank: float
    clients_selected: int
    clients_dropped: int
    updates_aggregated: int  # 0: the global adapter was kept as it was
    truncated_fraction: float
    train_loss: float
    bytes_delivered: int
    cum_bytes_delivered: int
    packets: int
    retransmissions: int
    compute_energy_j: float
    extra: dict = field(default_factory=dict)


def client_record(server_round: int, k: int, client: int, pending, uplink, replies, delivered: bool, reason: str) -> ClientRecord:
    metrics, tx, states, ranks = replies.metrics(client), uplink.transmissions[k], pending.states, pending.ranks[k]
    return ClientRecord(
        round=server_round,
        client=client,
        ranks=" ".join(str(int(r)) for r in ranks),
        mean_rank=float(ranks.mean()),
        params_up=int(uplink.params_up[k]),
        bytes_up=int(uplink.up_bits[k] // 8),
        bytes_down=int(pending.bytes_down[k] + uplink.gradient_bytes[k]),
        bytes_up_adapter=int(uplink.adapter_bits[k] // 8),
        bytes_up_fisher=int(uplink.fisher_bits[k] // 8),
        bytes_up_control=int(uplink.control_bits[k] // 8),
        bytes_up_activations=int(uplink.activation_bytes[k]),
        bytes_down_gradients=int(uplink.gradient_bytes[k]),
        snr_db=float(states.snr_db[k]),
        fading_gain=float(states.fading_gain[k]),
        bandwidth_hz=float(states.bandwidth_hz[k]),
        rate_bps=float(states.rate_bps[k]),
        latency_s=tx.latency_s,
        energy_j=tx.energy_j,
        delivered=int(delivered),
        drop_reason=reason,
        packets=tx.packets,
        retransmissions=tx.retransmissions,
        compute_s=tx.compute_s,
        compute_energy_j=tx.compute_energy_j,
        num_examples=int(metrics["num-examples"]) if metrics else 0,
        train_loss=float(metrics["train-loss"]) if metrics else float("nan"),
        extra={name: float(values[k]) for name, values in states.extra.items()} | ({"error": replies.errors[client]} if client in replies.errors else {}),
    )


def round_record(
    server_round: int, pending, uplink, records: list[ClientRecord], aggregated: int, truncated_fraction: float, round_latency: float, totals
) -> RoundRecord:
    """The round's record (`totals`: the cumulative counters after this round, `ByteTotals`)."""
    transmissions = uplink.transmissions
    train_losses = [r.train_loss for r in records if r.delivered]
    return RoundRecord(
        round=server_round,
        bytes_up=int(uplink.up_bits.sum() // 8),
        bytes_down=int(pending.bytes_down.sum() + uplink.gradient_bytes.sum()),
        bytes_up_adapter=int(uplink.adapter_bits.sum() // 8),
        bytes_up_fisher=int(uplink.fisher_bits.sum() // 8),
        bytes_up_control=int(uplink.control_bits.sum() // 8),
        bytes_up_activations=int(uplink.activation_bytes.sum()),
        bytes_down_gradients=int(uplink.gradient_bytes.sum()),
        cum_bytes_up=totals.up,
        cum_bytes_down=totals.down,
        uplink_latency_s=round_latency,
        downlink_latency_s=max((t.latency_s for t in uplink.downlinks), default=0.0),
        energy_j=float(sum(t.energy_j for t in transmissions)),
        mean_rank=float(pending.ranks.mean()),
        clients_selected=len(pending.clients),
        clients_dropped=len(pending.clients) - aggregated,
        updates_aggregated=aggregated,
        truncated_fraction=truncated_fraction,
        train_loss=float(np.mean(train_losses)) if train_losses else float("nan"),
        bytes_delivered=delivered_bytes(records),
        cum_bytes_delivered=totals.delivered,
        packets=int(sum(t.packets for t in transmissions)),
        retransmissions=int(sum(t.retransmissions for t in transmissions)),
        compute_energy_j=float(sum(t.compute_energy_j for t in transmissions)),
    )


@dataclass
class ByteTotals:
    """Cumulative bytes of a run: sent up, sent down, delivered up."""

    up: int = 0
    down: int = 0
    delivered: int = 0

    def add(self, pending, uplink, records: list[ClientRecord]) -> None:
        self.up += int(uplink.up_bits.sum() // 8)
        self.down += int(pending.bytes_down.sum() + uplink.gradient_bytes.sum())
        self.delivered += delivered_bytes(records)


def delivered_bytes(records: list[ClientRecord]) -> int:
    return int(sum(r.bytes_up for r in records if r.delivered))


def reward_info(pending, uplink, records: list[ClientRecord], full_bits: float, deadline_s: float, max_rank: int) -> dict:
    """What a learning policy's reward needs (policies.common.round_reward); evaluation adds the losses."""
    up_bits = uplink.intended_bits
    return {
        "bits_up": up_bits.astype(float),
        "bits_full": np.full(len(up_bits), float(full_bits)),
        "rate_bps": np.asarray(pending.states.upload_rate_bps, dtype=float),  # what the airtime follows
        "snr_db": np.asarray(pending.states.snr_db, dtype=float),
        "latency_s": np.array([t.latency_s for t in uplink.transmissions]),
        "energy_j": np.array([t.energy_j for t in uplink.transmissions]),
        "compute_energy_j": np.array([t.compute_energy_j for t in uplink.transmissions]),
        "drop_reasons": [r.drop_reason for r in records],
        "delivered": np.array([bool(r.delivered) for r in records]),
        "deadline_s": deadline_s,
        "ranks": pending.ranks,
        "max_rank": max_rank,
        "layer_importance": pending.layer_weights,  # the same for every policy: not what the policy observed
    }
