"""What the learning policies share: observation features, the reward, and the action <-> rank maps.

Features (one row per selected client, all roughly in [-1, 1] or [0, 1]):

    snr_db / 20, log10(fading_gain) / 2, bandwidth share (b_k / Σ b), log10(rate_bps) / 8 - 0.75,
    budget = clip(rate · T / bits_full, 0, 4) / 4    (T = deadline; 1 when there is none),
    mean(last_ranks) / max_rank, token entropy / 10, OOV rate,
    round / rounds, last loss / 5, last accuracy,
    layer importance (share per layer, Σ = 1; uniform before any aggregate)

where bits_full = (Σ_l params_per_rank_l · max_rank + fixed_params) · bits_per_param is
the client's upload at full rank. `budget` is the fraction of a full-rank upload the
client's rate fits inside the deadline: the one number channel-aware ranking needs.

Reward of a round (`RewardConfig`):

    r = -loss                       (objective: loss)
    r = accuracy - last_accuracy    (objective: accuracy-gain)
    r -= λ · cost + penalty · (clients dropped for the deadline) / (clients selected)

with the cost normalised to about [0, 1]:

    bytes:   Σ_k bits_k / Σ_k bits_full
    latency: mean_k bits_k / (rate_k · T)  (T = deadline, or the full-rank upload time when none)
             -- the reference's bits / (C · T)
    energy:  Σ_k E_k / Σ_k E_k^full, E_k^full = E_k · bits_full / bits_k (energy is linear in bits
             at fixed power and rate)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedsim.types import Observation

CLIENT_FEATURES = 11  # features before the per-layer importance block


def n_features(n_layers: int) -> int:
    return CLIENT_FEATURES + n_layers


def full_rank_bits(observation: Observation) -> float:
    params = float(np.sum(observation.params_per_rank) * observation.max_rank + observation.fixed_params)
    return params * observation.bits_per_param


def client_features(observation: Observation) -> np.ndarray:
    """Float32 [clients, n_features(layers)], finite and clipped to [-5, 5]."""
    ch = observation.channel
    n = observation.n_clients
    deadline = observation.deadline_s if np.isfinite(observation.deadline_s) else None
    budget = np.ones(n) if deadline is None else np.clip(ch.rate_bps * deadline / full_rank_bits(observation), 0, 4) / 4
    stats = observation.data_stats if observation.data_stats.shape == (n, 2) else np.zeros((n, 2))
    importance = np.asarray(observation.layer_importance, dtype=float)
    total = importance.sum()
    share = importance / total if total > 0 and np.isfinite(total) else np.full(observation.n_layers, 1.0 / observation.n_layers)
    loss = observation.last_loss if np.isfinite(observation.last_loss) else 0.0
    acc = observation.last_accuracy if np.isfinite(observation.last_accuracy) else 0.0
    columns = [
        ch.snr_db / 20.0,
        np.log10(np.maximum(ch.fading_gain, 1e-6)) / 2.0,
        ch.bandwidth_hz / max(float(np.sum(ch.bandwidth_hz)), 1e-12),
        np.log10(np.maximum(ch.rate_bps, 1.0)) / 8.0 - 0.75,
        budget,
        np.asarray(observation.last_ranks, dtype=float).mean(axis=1) / observation.max_rank,
        stats[:, 0] / 10.0,
        stats[:, 1],
        np.full(n, observation.round / max(observation.total_rounds, 1)),
        np.full(n, loss / 5.0),
        np.full(n, acc),
    ]
    features = np.concatenate([np.stack(columns, axis=1), np.tile(share, (n, 1))], axis=1)
    return np.clip(np.nan_to_num(features, nan=0.0, posinf=5.0, neginf=-5.0), -5, 5).astype(np.float32)


def action_to_ranks(action: np.ndarray, min_rank: int, max_rank: int) -> np.ndarray:
    """[-1, 1] -> integer ranks in [min_rank, max_rank] (linear, rounded)."""
    x = np.clip(np.asarray(action, dtype=float), -1.0, 1.0)
    return np.rint(min_rank + (x + 1.0) / 2.0 * (max_rank - min_rank)).astype(np.int64)


def ranks_to_action(ranks: np.ndarray, min_rank: int, max_rank: int) -> np.ndarray:
    """The inverse of `action_to_ranks` on integer ranks (exact round trip)."""
    span = max(max_rank - min_rank, 1)
    return (2.0 * (np.asarray(ranks, dtype=float) - min_rank) / span - 1.0).astype(np.float32)


class RewardConfig(BaseModel):
    """How a round is scored for the learning policies (see the module docstring for the formulas)."""

    model_config = ConfigDict(extra="forbid")

    objective: Literal["loss", "accuracy-gain"] = Field("loss", description="'loss': r = -loss after the round; 'accuracy-gain': r = accuracy - previous accuracy.")
    cost: Literal["bytes", "latency", "energy"] = Field("latency", description="Which normalised cost λ multiplies.")
    lam: float = Field(0.1, ge=0, description="λ, the weight of the normalised cost (the reference uses 0.1).")
    deadline_penalty: float = Field(1.0, ge=0, description="Subtracted times the fraction of selected clients dropped for missing the deadline.")


def client_rewards(config: RewardConfig, info: dict) -> np.ndarray:
    """Each selected client's share of the round's reward: the shared objective minus λ · its own cost and
    the penalty if it missed the deadline. Their mean is `round_reward` exactly; a per-client policy
    learns from its own client's term (which client's rank vector cost what)."""
    bits = np.asarray(info["bits_up"], dtype=float)
    full = np.asarray(info["bits_full"], dtype=float)
    if config.cost == "bytes":
        cost = bits / max(float(full.mean()), 1.0) if len(bits) else bits  # mean = Σ bits / Σ bits_full
    elif config.cost == "latency":
        rate = np.maximum(np.asarray(info["rate_bps"], dtype=float), 1e-9)
        deadline = float(info.get("deadline_s", float("inf")))
        horizon = np.full(len(bits), deadline) if np.isfinite(deadline) else full / rate
        cost = bits / (rate * horizon)
    else:
        energy = np.asarray(info["energy_j"], dtype=float)
        sent = bits > 0
        full_energy = np.sum(energy[sent] * full[sent] / bits[sent])
        cost = energy * len(bits) / full_energy if full_energy > 0 else np.zeros(len(bits))  # mean = Σ E / Σ E_full
    late = np.array([reason == "deadline" for reason in info.get("drop_reasons", [""] * len(bits))], dtype=float)
    return round_objective(config, info) - config.lam * cost - config.deadline_penalty * late


def round_objective(config: RewardConfig, info: dict) -> float:
    if config.objective == "loss":
        return -float(info["loss"])
    last = info.get("last_accuracy", float("nan"))
    return float(info["accuracy"]) - (float(last) if np.isfinite(last) else 0.0)


def round_reward(config: RewardConfig, info: dict) -> float:
    """Score one round from the strategy's round info (keys: loss, accuracy, last_accuracy, bits_up, bits_full,
    rate_bps, latency_s, energy_j, deadline_s, drop_reasons): the mean of `client_rewards`."""
    per_client = client_rewards(config, info)
    return float(per_client.mean()) if len(per_client) else round_objective(config, info)
