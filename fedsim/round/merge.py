"""Stage `aggregate`: the new global adapter and layer importance from what arrived.

Over the air (AirComp) the received superposition is applied as it is; otherwise the delivered
uploads are aggregated (`fedsim.aggregation`: FedAvg-style mean, zero-padded, SVD, Fisher) and the
federated algorithm's server step follows (`fedsim.algorithms`: FedAvgM, FedAdam, SCAFFOLD, ...).
When clients report AdaLoRA sensitivity, it replaces the server-side singular values as importance.
"""

from __future__ import annotations

import numpy as np

from fedsim.adapter_state import AdapterState
from fedsim.aggregation import Aggregated, aggregate
from fedsim.payload import a_key, b_key


def merge_round(global_state: AdapterState, delivered: list[dict], weights: list[float], superposition, aggregation, algorithm, rng):
    """(new global state, layer importance, truncated fraction)."""
    if superposition is not None:
        merged = Aggregated(*apply_superposition(global_state, superposition.aggregate, aggregation.average), 0.0)
    else:
        merged = aggregate(global_state, delivered, weights, aggregation.method, rng, aggregation.average)
    return algorithm.server_update(global_state, merged, delivered, weights)


def apply_superposition(global_state: AdapterState, superposed: dict[str, np.ndarray], average: str) -> tuple[AdapterState, np.ndarray]:
    """AirComp: the received (noisy) zero-padded average of what the clients sent is added to the global
    adapter (`average: updates`, the clients sent changes) or replaces it (`models`); unsent layers keep theirs."""
    state = global_state.copy()
    importance = np.zeros(len(state.A))
    base = 1.0 if average == "updates" else 0.0
    for i in range(len(state.A)):
        if a_key(i) in superposed:
            state.A[i] = (base * state.A[i].astype(np.float64) + superposed[a_key(i)]).astype(np.float32)
            state.B[i] = (base * state.B[i].astype(np.float64) + superposed[b_key(i)]).astype(np.float32)
            importance[i] = float(np.linalg.svd(state.B[i].astype(np.float64) @ state.A[i], compute_uv=False).sum())
    for key in state.head:
        if key in superposed:
            state.head[key] = (base * state.head[key].astype(np.float64) + superposed[key]).astype(np.float32)
    return state, importance


def client_importance(sensitivities: list[np.ndarray], weights: list[float]) -> np.ndarray | None:
    """The delivered clients' AdaLoRA sensitivity, weighted by their examples (None when none reported it)."""
    return np.average(sensitivities, axis=0, weights=weights) if sensitivities else None
