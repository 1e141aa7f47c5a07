"""What every federated algorithm is: a small class with server-side hooks around the round's aggregate.

The strategy (fedsim.strategy) owns the round: it samples clients, meters the channel and builds the
FedAvg aggregate of the delivered updates (`fedsim.aggregation.aggregate`). An algorithm adds to that:

- `setup(initial_state)`: shapes the server state from the initial global adapter;
- `downlink(client, ranks)`: arrays the server sends beside the adapter (metered, float32), e.g. SCAFFOLD's c;
- `memory(client, ranks)`: the client's own state, which the simulator carries for it between rounds
  (never metered; see `fedsim.algorithms.scaffold`), under `fedsim.payload.MEMORY_PREFIX`;
- `upload_shapes(shapes)`: the shapes of the extra arrays a client sends (for dequantisation);
- `remember(client, arrays)`: a client's new state, from every reply (delivered or lost on the air);
- `server_update(global_state, aggregated, uploads, weights)`: the new global adapter, from the
  FedAvg aggregate (`Aggregated`) of the round's delivered uploads;
- `state_dict()`: the server state (momenta, control variates) saved with the run.

What a client does differently (FedProx's proximal term, SCAFFOLD's correction) lives in
`fedsim.algorithms.local`, which both training engines call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.payload import A_PREFIX, B_PREFIX, FACTOR_PREFIXES


def at_ranks(key: str, array: np.ndarray, ranks) -> np.ndarray | None:
    """`array` (shaped like the global adapter's `key`: A.{i} [R, in], B.{i} [out, R] or a head tensor) cut to the
    client's rank of that layer, as `fedsim.adapter_state.truncate` cuts the adapter; None at rank 0."""
    if key.startswith(FACTOR_PREFIXES):
        rank = int(ranks[int(key[2:])])
        if rank == 0:
            return None
        return np.ascontiguousarray(array[:rank] if key[0] == "A" else array[:, :rank], dtype=np.float32)
    return np.ascontiguousarray(array, dtype=np.float32)


def region(key: str, value: np.ndarray):
    """The index of a full-size array (shaped like the global adapter's `key`) that `value`, cut to a rank, covers."""
    if key.startswith(A_PREFIX):
        return np.s_[: value.shape[0]]
    if key.startswith(B_PREFIX):
        return np.s_[:, : value.shape[1]]
    return np.s_[...]


class FederatedAlgorithm:
    name = "fedavg"
    upload_prefix = ""  # keys of the extra arrays a client uploads (metered as bytes_up_control); "" = none
    upload_copies = 1  # the upload's size in adapters of the client's ranks (what rank policies budget with)

    def __init__(self, config: Any, method: str, num_clients: int):
        self.config = config
        self.method = method  # the aggregation method: decides the space a server optimiser acts in
        self.num_clients = num_clients

    def setup(self, initial_state) -> None:
        """Called once with the initial global adapter (`fedsim.adapter_state.AdapterState`), before round 1."""

    def downlink(self, client: int, ranks: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def memory(self, client: int, ranks: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def upload_shapes(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        return {}

    def remember(self, client: int, arrays: dict[str, np.ndarray]) -> None:
        pass

    def server_update(self, global_state, aggregated, uploads: list[dict[str, np.ndarray]], weights: list[float]):
        """`aggregated` is `fedsim.aggregation.Aggregated` (state, importance, truncated_fraction); return one."""
        return aggregated

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}
