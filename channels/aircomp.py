r"""Over-the-air aggregation (AirComp, ``mode: aircomp``): analog superposition of the updates.

The scheduled clients send their updates at the same time over the whole band. Each update is
zero-padded to the common shape first (LoRA factors to ``max_rank``: A's missing rows and B's
missing columns are zeros), so all clients send equally shaped vectors :math:`x_k \in \mathbb R^D`
and the superposition of the padded factors is exactly the zero-padded factor average
(``aggregation: fedavg-factors``), not the product-space mean.

*Truncated channel inversion.* Client k's instantaneous SNR at full power :math:`P_{max}` is
:math:`g_k = \bar\gamma_k |h_k|^2`. Clients in a deep fade, :math:`|h_k|^2 < g_{th}`, stay silent
(dropped, reason ``aircomp-truncated``); the others pre-equalise their channel so that all arrive
with the same amplitude :math:`\sqrt{\eta}`, :math:`\eta = \min_{k \in S} g_k` (the weakest sender
uses full power, client k uses :math:`P_k = P_{max}\,\eta / g_k \le P_{max}`). With data weights
:math:`w_k` (normalised over the senders S), symbols normalised by the mean entry power
:math:`\bar P = \frac{1}{|S| D}\sum_{k\in S}\|x_k\|^2`, and unit receiver noise, the server receives
:math:`y = \sqrt{\eta}\sum_{k\in S} w_k x_k/\sqrt{\bar P} + z` and estimates

.. math::
    \hat x = \sqrt{\bar P / \eta}\; y = \sum_{k \in S} w_k x_k + \sqrt{\bar P/\eta}\; z,
    \qquad z \sim \mathcal N(0, I_D),

so the aggregation MSE against the noiseless mean is :math:`\bar P / \eta`, falling as 1/SNR.
A tensor that only some senders carry (a layer at rank 0) is averaged over those, its noise scaled
by the inverse of their weight sum.

*Cost.* One slot for everyone, whatever the number of clients: :math:`D` real symbols, two per
complex channel use, over bandwidth B: :math:`t = \lceil D/2 \rceil / B`; client energy :math:`P_k t`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class AirCompConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gain_threshold: float = Field(0.1, ge=0, description="Truncation: clients with |h|^2 below this stay silent.")
    noise: bool = Field(True, description="Add receiver noise (false: noiseless superposition, equal to fedavg-factors).")


@dataclass
class Superposition:
    aggregate: dict[str, np.ndarray]  # padded tensors that at least one sender carried
    mse: float  # mean squared error per entry against the noiseless weighted mean (nan when nobody sent)
    senders: np.ndarray  # bool per scheduled client


def pad(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape)
    out[tuple(slice(0, s) for s in np.shape(x))] = x
    return out


def slot_seconds(shapes: dict[str, tuple[int, ...]], bandwidth_hz: float) -> float:
    symbols = sum(int(np.prod(s)) for s in shapes.values())
    return float(np.ceil(symbols / 2.0) / bandwidth_hz)


def superpose(
    updates: list[dict[str, np.ndarray] | None],
    weights: np.ndarray,
    snr_db: np.ndarray,
    fading_gain: np.ndarray,
    senders: np.ndarray,
    shapes: dict[str, tuple[int, ...]],
    noise: bool,
    rng: np.random.Generator,
) -> Superposition:
    """Receive the superposition of the `senders`' zero-padded updates (see the module docstring)."""
    senders = np.asarray(senders, dtype=bool)
    index = np.flatnonzero(senders)
    if len(index) == 0:
        return Superposition({}, float("nan"), senders)
    w = np.asarray(weights, dtype=float)[index]
    w = w / w.sum()
    padded = [{key: pad(updates[k][key], shape) for key, shape in shapes.items() if key in updates[k]} for k in index]
    total_entries = sum(int(np.prod(s)) for s in shapes.values())
    mean_power = sum(float(np.sum(v * v)) for p in padded for v in p.values()) / (len(index) * total_entries)
    eta = float(np.min(10.0 ** (np.asarray(snr_db, dtype=float)[index] / 10.0) * np.asarray(fading_gain, dtype=float)[index]))
    noise_std = np.sqrt(mean_power / eta) if noise else 0.0
    aggregate: dict[str, np.ndarray] = {}
    squared_error, entries = 0.0, 0
    for key, shape in shapes.items():
        carriers = [j for j in range(len(index)) if key in padded[j]]
        if not carriers:
            continue
        weight_sum = float(w[carriers].sum())
        clean = sum(w[j] * padded[j][key] for j in carriers) / weight_sum
        received = clean + (noise_std / weight_sum) * rng.standard_normal(shape) if noise else clean
        aggregate[key] = received
        squared_error += float(np.sum((received - clean) ** 2))
        entries += clean.size
    return Superposition(aggregate, squared_error / max(entries, 1), senders)
