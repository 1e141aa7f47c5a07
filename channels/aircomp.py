r"""Over-the-air aggregation (AirComp, ``mode: aircomp``): analog superposition of the updates.

Truncated channel inversion after Zhu, Wang, Huang, "Broadband Analog Aggregation for Low-Latency
Federated Edge Learning", IEEE TWC 2019, under a per-round power constraint: a sender's transmit power
averaged over the round's slot is at most :math:`P_{max}` (single symbols may exceed it), for the
round's own fading realisation. Zhu et al. instead scale by the long-term average over the fading
(their :math:`\rho_0`); here the common amplitude c is set by the round's binding sender.

*Signals.* The scheduled clients send their updates at the same time over the whole band. The slot
carries, per tensor, the entries the would-be senders' updates span: a layer's factors up to the
largest rank any of them trained (a layer none of them trained is not on the air). Each update is
zero-padded to that common shape (A's missing rows and B's missing columns are zeros), so every
client sends a vector :math:`x_k \in \mathbb R^D` and the superposition of the padded factors is
exactly the zero-padded factor average (``aggregation: fedavg-factors``, the only method a
superposition computes), not the product-space mean. Entries past every sender's rank are not on
the air and get no noise; as in the digital ``fedavg-factors``, the server then keeps its own value for
them with ``average: updates`` and sets them to 0 with ``average: models`` (the mean of the padded models). With ``quantization.bits`` below 32 the clients superpose their decoded
(dequantised) updates: the quantisation error is in the aggregate, the reported error below is
measured against those decoded updates, and the radio cost does not change with the bits. Client k's mean entry power is
:math:`m_k = \|x_k\|^2 / D`; its full-power (:math:`P_{max}`) instantaneous SNR is
:math:`\gamma_k = \bar\gamma_k |h_k|^2`; the receiver noise has unit variance per real entry.

*Truncation.* Clients in a deep fade, :math:`|h_k|^2 < g_{th}`, stay silent (dropped, reason
``aircomp-truncated``), as do clients past the deadline; the others are the senders S. Their data
weights :math:`w_k` are normalised over S.

*Channel inversion.* Every sender pre-equalises its channel so that its contribution arrives as
:math:`c\,w_k x_k`; the server receives :math:`y = c \sum_{k\in S} w_k x_k + z`,
:math:`z \sim \mathcal N(0, I_D)`, and estimates :math:`\hat x = y / c`. Client k then needs the
transmit power :math:`p_k = P_{max}\, c^2 w_k^2 m_k / \gamma_k`, and the largest common c with
every :math:`p_k \le P_{max}` is

.. math::
    c^2 = \min_{k \in S} \frac{\gamma_k}{w_k^2 m_k},

so the binding sender (the minimiser, not necessarily the weakest channel) uses full power and the
others less. The noise MSE per entry is :math:`1/c^2`; for K senders with equal weights and equal
powers m it is :math:`m / (K^2 \gamma_{min})`, Zhu et al.'s :math:`\sigma^2 / (K^2 \rho_0)`.
A tensor only the senders C carry (a layer at rank 0 elsewhere) is received as
:math:`c\sum_{k\in C} w_k x_k + z` and divided by :math:`c\,W_C`, :math:`W_C = \sum_{k\in C} w_k`
(noise variance :math:`1/(c^2 W_C^2)`).

*Error reported* (squared error over the tensors received, per entry on the air), against the reference
:math:`\bar x`, the weighted mean of the updates of *all* scheduled clients that computed one (the
senders and the truncated or late ones), weights renormalised over them; D is the number of entries
on the air, and the sums run over the received tensors' whole padded shapes (so a truncated client's
rows past every sender's rank count in the truncation bias):

* ``mse_noise`` :math:`= \|\hat x - x_S\|^2 / D`, with :math:`x_S` the senders' clean weighted mean;
* ``mse_truncation`` :math:`= \|x_S - \bar x\|^2 / D`, the bias of leaving the truncated clients out;
* ``mse`` :math:`= \|\hat x - \bar x\|^2 / D`, the round's measured error. It equals the sum of the
  two parts plus a cross term :math:`2\langle \hat x - x_S, x_S - \bar x\rangle / D` of mean zero
  (the noise is independent of the updates), so the parts add up in expectation, not exactly.

A tensor that present clients carry but no sender does is not received (the server keeps its own
value) and is left out of the error.

*Cost.* One slot for everyone, whatever the number of clients: :math:`D` real symbols, two per
complex channel use, over bandwidth B: :math:`t = \lceil D/2 \rceil / B`; sender energy
:math:`p_k t` (plus compute energy, `channels.compute`). The slot follows the ranks the would-be
senders trained, so a rank policy saves airtime; the ledger's byte columns are each sender's own
digitally encoded upload (what the same update costs on a digital uplink), not channel uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class AirCompConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gain_threshold: float = Field(0.1, ge=0, description="Truncation: clients with |h|^2 below this stay silent.")
    noise: bool = Field(True, description="Add receiver noise (false: noiseless superposition, equal to fedavg-factors).")


@dataclass
class Superposition:
    aggregate: dict[str, np.ndarray]  # padded tensors that at least one sender carried
    mse: float  # per entry, received vs weighted mean of all present updates (nan when nobody sent)
    senders: np.ndarray  # bool per scheduled client
    mse_noise: float = float("nan")  # received vs the senders' clean weighted mean
    mse_truncation: float = float("nan")  # senders' clean mean vs all present clients' mean
    power_fraction: np.ndarray = field(default_factory=lambda: np.zeros(0))  # p_k / P_max per scheduled client
    scale: float = float("nan")  # c: the senders' common received amplitude


def pad(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape)
    out[tuple(slice(0, s) for s in np.shape(x))] = x
    return out


def carried_shapes(updates: list[dict[str, np.ndarray] | None], candidates: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Per tensor of `shapes`, the entries the `candidates`' updates span (the elementwise largest of their shapes);
    a tensor none of them carries is left out."""
    carried: dict[str, tuple[int, ...]] = {}
    for key, shape in shapes.items():
        spans = [np.shape(updates[k][key]) for k in np.flatnonzero(candidates) if updates[k] is not None and key in updates[k]]
        if spans:
            carried[key] = tuple(int(max(s[d] for s in spans)) for d in range(len(shape)))
    return carried


def slot_seconds(shapes: dict[str, tuple[int, ...]], bandwidth_hz: float) -> float:
    symbols = sum(int(np.prod(s)) for s in shapes.values())
    return float(np.ceil(symbols / 2.0) / bandwidth_hz)


def _normalised(weights: np.ndarray) -> np.ndarray:
    total = weights.sum()
    return weights / total if total > 0 else np.full(len(weights), 1.0 / len(weights))


def _weighted_mean(vectors: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return sum(w * v for w, v in zip(weights, vectors)) / weights.sum()


def superpose(
    updates: list[dict[str, np.ndarray] | None],
    weights: np.ndarray,
    snr_db: np.ndarray,
    fading_gain: np.ndarray,
    senders: np.ndarray,
    shapes: dict[str, tuple[int, ...]],
    noise: bool,
    rng: np.random.Generator,
    carried: dict[str, tuple[int, ...]] | None = None,
) -> Superposition:
    """Receive the superposition of the `senders`' zero-padded updates (see the module docstring).

    `updates[k]` is None for a client that computed nothing; the others are the reference's clients. The aggregate
    has the full `shapes`; `carried` (default: the senders' spans, `carried_shapes`) are the entries on the air.
    """
    senders = np.asarray(senders, dtype=bool)
    n = len(senders)
    power = np.zeros(n)
    index = np.flatnonzero(senders)
    if len(index) == 0:
        return Superposition({}, float("nan"), senders, float("nan"), float("nan"), power)
    weights = np.asarray(weights, dtype=float)
    present = np.array([k for k in range(n) if updates[k] is not None], dtype=np.int64)
    padded = {int(k): {key: pad(updates[k][key], shape) for key, shape in shapes.items() if key in updates[k]} for k in present}
    carried = carried_shapes(updates, senders, shapes) if carried is None else carried
    total_entries = max(sum(int(np.prod(s)) for s in carried.values()), 1)
    w = _normalised(weights[index])
    v = dict(zip(present.tolist(), _normalised(weights[present])))
    entry_power = np.array([sum(float(np.sum(x * x)) for x in padded[int(k)].values()) / total_entries for k in index])
    gamma = 10.0 ** (np.asarray(snr_db, dtype=float)[index] / 10.0) * np.asarray(fading_gain, dtype=float)[index]
    load = w**2 * entry_power  # received power per entry per unit c^2
    with np.errstate(divide="ignore", invalid="ignore"):
        c2 = float(np.min(np.where(load > 0, gamma / load, np.inf)))
    if np.isfinite(c2):
        power[index] = c2 * load / gamma
    noise_var = 1.0 / c2 if noise else 0.0  # 0 when every sender's update is zero (c unbounded)
    aggregate: dict[str, np.ndarray] = {}
    total, from_noise, from_truncation, entries = 0.0, 0.0, 0.0, 0
    for key, shape in shapes.items():
        carriers = [j for j, k in enumerate(index) if key in padded[int(k)]]
        if not carriers:
            continue
        weight_sum = float(w[carriers].sum())
        clean = _weighted_mean([padded[int(index[j])][key] for j in carriers], w[carriers])
        received = clean + (np.sqrt(noise_var) / weight_sum) * pad(rng.standard_normal(carried[key]), shape) if noise else clean
        aggregate[key] = received
        holders = [int(k) for k in present if key in padded[int(k)]]
        reference = _weighted_mean([padded[k][key] for k in holders], np.array([v[k] for k in holders]))
        total += float(np.sum((received - reference) ** 2))
        from_noise += float(np.sum((received - clean) ** 2))
        from_truncation += float(np.sum((clean - reference) ** 2))
        entries += int(np.prod(carried[key]))
    entries = max(entries, 1)
    return Superposition(aggregate, total / entries, senders, from_noise / entries, from_truncation / entries, power, float(np.sqrt(c2)))
