"""Stages `record` and `feedback`: the round's ledger rows (rounds.csv, clients.csv) and what a
learning policy's reward needs (`policies.common.round_reward`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.adapter_state import payload_params


def drop_reason(delivered: bool, client: int, replies, tx, finite: bool) -> str:
    """Why a client's update did not reach the aggregate ("" when it did)."""
    if delivered:
        return ""
    if client in replies.errors:
        return "client-error"
    if client not in replies.received:
        return "no-reply"
    if not tx.delivered and tx.drop_reason:
        return tx.drop_reason
    return "non-finite" if not finite else tx.drop_reason


def client_row(server_round: int, k: int, client: int, pending, uplink, replies, delivered: bool, reason: str) -> dict:
    upload, metrics, tx, states, ranks = uplink.uploads[k], replies.metrics(client), uplink.transmissions[k], pending.states, pending.ranks[k]
    return {
        "round": server_round,
        "client": client,
        "ranks": " ".join(str(int(r)) for r in ranks),
        "mean_rank": float(ranks.mean()),
        "params_up": payload_params(upload) if upload is not None else 0,
        "bytes_up": int(uplink.up_bits[k] // 8),
        "bytes_down": int(pending.bytes_down[k] + uplink.gradient_bytes[k]),
        "bytes_up_adapter": int(uplink.adapter_bits[k] // 8),
        "bytes_up_fisher": int(uplink.fisher_bits[k] // 8),
        "bytes_up_control": int(uplink.control_bits[k] // 8),
        "bytes_up_activations": int(uplink.activation_bytes[k]),
        "bytes_down_gradients": int(uplink.gradient_bytes[k]),
        "snr_db": float(states.snr_db[k]),
        "fading_gain": float(states.fading_gain[k]),
        "bandwidth_hz": float(states.bandwidth_hz[k]),
        "rate_bps": float(states.rate_bps[k]),
        "latency_s": tx.latency_s,
        "energy_j": tx.energy_j,
        "delivered": int(delivered),
        "drop_reason": reason,
        "packets": tx.packets,
        "retransmissions": tx.retransmissions,
        "compute_s": tx.compute_s,
        "compute_energy_j": tx.compute_energy_j,
        "num_examples": int(metrics["num-examples"]) if metrics else 0,
        "train_loss": float(metrics["train-loss"]) if metrics else float("nan"),
        **{f"{name}": float(values[k]) for name, values in states.extra.items()},
        **({"error": replies.errors[client]} if client in replies.errors else {}),
    }


def round_row(server_round: int, pending, uplink, client_rows: list[dict], aggregated: int, truncated_fraction: float, round_latency: float, totals) -> dict:
    """The round's rounds.csv row (`totals`: the cumulative counters after this round, `ByteTotals`)."""
    transmissions = uplink.transmissions
    train_losses = [r["train_loss"] for r in client_rows if r["delivered"]]
    return {
        "round": server_round,
        "bytes_up": int(uplink.up_bits.sum() // 8),
        "bytes_down": int(pending.bytes_down.sum() + uplink.gradient_bytes.sum()),
        "bytes_up_adapter": int(uplink.adapter_bits.sum() // 8),
        "bytes_up_fisher": int(uplink.fisher_bits.sum() // 8),
        "bytes_up_control": int(uplink.control_bits.sum() // 8),
        "bytes_up_activations": int(uplink.activation_bytes.sum()),
        "bytes_down_gradients": int(uplink.gradient_bytes.sum()),
        "cum_bytes_up": totals.up,
        "cum_bytes_down": totals.down,
        "uplink_latency_s": round_latency,
        "downlink_latency_s": max((t.latency_s for t in uplink.downlinks), default=0.0),
        "energy_j": float(sum(t.energy_j for t in transmissions)),
        "mean_rank": float(pending.ranks.mean()),
        "clients_selected": len(pending.clients),
        "clients_dropped": len(pending.clients) - aggregated,
        "updates_aggregated": aggregated,  # 0: the global adapter was kept as it was
        "truncated_fraction": truncated_fraction,
        "train_loss": float(np.mean(train_losses)) if train_losses else float("nan"),
        "bytes_delivered": delivered_bytes(client_rows),
        "cum_bytes_delivered": totals.delivered,
        "packets": int(sum(t.packets for t in transmissions)),
        "retransmissions": int(sum(t.retransmissions for t in transmissions)),
        "compute_energy_j": float(sum(t.compute_energy_j for t in transmissions)),
    }


@dataclass
class ByteTotals:
    """Cumulative bytes of a run: sent up, sent down, delivered up."""

    up: int = 0
    down: int = 0
    delivered: int = 0

    def add(self, pending, uplink, client_rows: list[dict]) -> None:
        self.up += int(uplink.up_bits.sum() // 8)
        self.down += int(pending.bytes_down.sum() + uplink.gradient_bytes.sum())
        self.delivered += delivered_bytes(client_rows)


def delivered_bytes(client_rows: list[dict]) -> int:
    return int(sum(r["bytes_up"] for r in client_rows if r["delivered"]))


def reward_info(pending, uplink, client_rows: list[dict], full_bits: float, deadline_s: float, max_rank: int) -> dict:
    """What a learning policy's reward needs (policies.common.round_reward); evaluation adds the losses."""
    up_bits = uplink.up_bits
    return {
        "bits_up": up_bits.astype(float),
        "bits_full": np.full(len(up_bits), float(full_bits)),
        "rate_bps": np.asarray(pending.states.rate_bps, dtype=float),
        "latency_s": np.array([t.latency_s for t in uplink.transmissions]),
        "energy_j": np.array([t.energy_j for t in uplink.transmissions]),
        "drop_reasons": [r["drop_reason"] for r in client_rows],
        "delivered": np.array([bool(r["delivered"]) for r in client_rows]),
        "deadline_s": deadline_s,
        "ranks": pending.ranks,
        "max_rank": max_rank,
        "layer_importance": pending.layer_importance,
    }
