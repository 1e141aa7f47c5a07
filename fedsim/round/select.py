"""Stage `select`: which clients train this round.

Every client is online with probability `clients.availability` (Bernoulli, independently per round),
and, with `clients.availability_trace`, only inside its trace's intervals (fedsim.availability);
`per_round` are sampled without replacement among the online ones. With every client always online
there is no availability draw, so the sampling stream is the same as without the feature.
"""

from __future__ import annotations

import numpy as np


class ClientSampler:
    def __init__(self, num_clients: int, per_round: int, availability: float, seed: int, trace: np.ndarray | None = None):
        self.num_clients, self.per_round, self.availability = num_clients, per_round, availability
        self.trace = trace  # bool [rounds, num_clients], or None
        # Independent streams, so that e.g. a policy asking for more randomness never shifts client sampling.
        self.rng_sampling = np.random.default_rng([seed, 7010])
        self.rng_availability = np.random.default_rng([seed, 7013])
        self.online: int | None = None  # this round's online clients (availability < 1)

    def sample(self, server_round: int) -> np.ndarray:
        """Sorted client indices of this round."""
        if self.availability >= 1.0 and self.trace is None:
            return np.sort(self.rng_sampling.choice(self.num_clients, size=self.per_round, replace=False))
        in_trace = self.trace[min(server_round, len(self.trace)) - 1] if self.trace is not None else np.ones(self.num_clients, dtype=bool)
        online = np.zeros(0, dtype=np.int64)
        while not len(online):  # nobody online: the server waits for the next check-in (the trace has someone each round)
            online = np.flatnonzero(in_trace & (self.rng_availability.random(self.num_clients) < self.availability))
        self.online = len(online)
        return np.sort(self.rng_sampling.choice(online, size=min(self.per_round, len(online)), replace=False))
