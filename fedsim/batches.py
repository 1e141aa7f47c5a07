"""Which examples each client trains on, step by step: seeded, and the same for every engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedsim.runtime import Runtime


def client_seed(seed: int, server_round: int, client_id: int) -> list[int]:
    return [seed, server_round, client_id, 7003]


def client_batches(runtime: Runtime, client_id: int, server_round: int):
    """The example indices of each local step of one client in one round (seeded; shared by every engine)."""
    cfg = runtime.scenario.train
    shard = runtime.partitions[client_id]
    rng = np.random.default_rng(client_seed(runtime.scenario.seed, server_round, client_id))
    order, cursor = rng.permutation(shard), 0
    for _ in range(cfg.local_steps):
        if cursor + cfg.batch_size > len(order):
            order, cursor = rng.permutation(shard), 0
        yield order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
