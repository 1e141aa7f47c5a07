"""The global adapter as plain arrays, and the payloads that travel between server and clients.

A payload is a flat dict of float32 arrays, exactly what goes into a Flower
ArrayRecord (its names: `fedsim.payload`). Bits are counted from these arrays, so
what is metered is what is sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedsim.model import RankedLora
from fedsim.payload import a_key, b_key


@dataclass
class AdapterState:
    A: list[np.ndarray]  # per layer, [max_rank, in]
    B: list[np.ndarray]  # per layer, [out, max_rank]
    head: dict[str, np.ndarray]  # what is trained besides the factors (`head.weight`, `head.bias`; empty for an LM)

    @property
    def max_rank(self) -> int:
        return self.A[0].shape[0]

    def delta(self, index: int) -> np.ndarray:
        """B A of one layer (without the LoRA scaling), float64."""
        return self.B[index].astype(np.float64) @ self.A[index].astype(np.float64)

    def copy(self) -> AdapterState:
        return AdapterState([a.copy() for a in self.A], [b.copy() for b in self.B], {k: v.copy() for k, v in self.head.items()})


def state_from_model(model: RankedLora) -> AdapterState:
    factors = [model.factor(i) for i in range(len(model.layers))]
    return AdapterState(
        A=[a.detach().cpu().numpy().copy() for a, _ in factors],
        B=[b.detach().cpu().numpy().copy() for _, b in factors],
        head={key: p.detach().cpu().numpy().copy() for key, p in model.head_tensors().items()},
    )


def truncate(state: AdapterState, ranks) -> dict[str, np.ndarray]:
    """The payload of `state` at per-layer `ranks`: only components inside each rank, plus the head."""
    payload: dict[str, np.ndarray] = {}
    for i, rank in enumerate(ranks):
        if rank > 0:
            payload[a_key(i)] = np.ascontiguousarray(state.A[i][:rank], dtype=np.float32)
            payload[b_key(i)] = np.ascontiguousarray(state.B[i][:, :rank], dtype=np.float32)
    for key, value in state.head.items():
        payload[key] = np.ascontiguousarray(value, dtype=np.float32)
    return payload


def payload_ranks(payload: dict[str, np.ndarray], n_layers: int) -> list[int]:
    return [payload[a_key(i)].shape[0] if a_key(i) in payload else 0 for i in range(n_layers)]


@torch.no_grad()
def load_payload(model: RankedLora, payload: dict[str, np.ndarray]) -> list[int]:
    """Write a payload into the model; components beyond each rank are zeroed (and masked). Returns the ranks."""
    ranks = payload_ranks(payload, len(model.layers))
    for i, rank in enumerate(ranks):
        a, b = model.factor(i)
        a.zero_()
        b.zero_()
        if rank:
            a[:rank] = torch.from_numpy(payload[a_key(i)])
            b[:, :rank] = torch.from_numpy(payload[b_key(i)])
    for key, parameter in model.head_tensors().items():
        parameter.copy_(torch.from_numpy(payload[key]))
    model.set_ranks(ranks)
    return ranks


def payload_params(payload: dict[str, np.ndarray]) -> int:
    return int(sum(v.size for v in payload.values()))


def payload_bits(payload: dict[str, np.ndarray], bits_per_param: int) -> int:
    """Bits on the air for a payload: parameters actually sent times bits per parameter."""
    return payload_params(payload) * bits_per_param
