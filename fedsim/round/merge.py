"""Stage `aggregate`: the new global adapter and layer importance from what arrived.

Over the air (AirComp) the received superposition is applied as it is; otherwise the delivered
uploads are aggregated (`fedsim.aggregation`: FedAvg-style mean, zero-padded, SVD, Fisher) and the
federated algorithm's server step follows (`fedsim.algorithms`: FedAvgM, FedAdam, SCAFFOLD, ...).
When clients report AdaLoRA sensitivity, it replaces the server-side singular values as importance.
"""

from __future__ import annotations

import numpy as np

from fedsim.adapter_state import AdapterState
from fedsim.aggregation import Aggregated, aggregate, singular_mass
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
    base = 1.0 if average == "updates" else 0.0
    for i in range(len(state.A)):
        if a_key(i) in superposed:
            state.A[i] = (base * state.A[i].astype(np.float64) + superposed[a_key(i)]).astype(np.float32)
            state.B[i] = (base * state.B[i].astype(np.float64) + superposed[b_key(i)]).astype(np.float32)
    importance = np.array([singular_mass(state.A[i], state.B[i], state.max_rank) for i in range(len(state.A))])
    for key in state.head:
        if key in superposed:
            state.head[key] = (base * state.head[key].astype(np.float64) + superposed[key]).astype(np.float32)
    return state, importance


def client_importance(reports: list[np.ndarray], weights: list[float], ranks: list[np.ndarray], previous: np.ndarray) -> np.ndarray:
    """Per layer, the delivered clients' AdaLoRA sensitivity per rank component (`fedsim.sensitivity`: each
    reports the sum over its components, so it is divided by the rank it trained), averaged over the clients
    that trained the layer, weighted by their examples. A layer no delivered client trained keeps `previous`:
    nothing measured it this round, and a 0 would read as "unimportant" to a policy that then never sends it."""
    importance = np.array(previous, dtype=float, copy=True)
    if not reports:
        return importance
    reports_arr, ranks_arr = np.asarray(reports, dtype=float), np.asarray(ranks, dtype=float)
    weights_arr = np.asarray(weights, dtype=float)[:, None] * (ranks_arr > 0)
    per_component = np.divide(reports_arr, ranks_arr, out=np.zeros_like(reports_arr), where=ranks_arr > 0)
    trained = weights_arr.sum(0) > 0
    importance[trained] = (weights_arr * per_component).sum(0)[trained] / weights_arr.sum(0)[trained]
    return importance
