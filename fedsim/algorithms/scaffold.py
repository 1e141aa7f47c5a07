"""`scaffold`: SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning"), option II, with the local optimiser kept as Adam the way OpenFedLLM does it.

Server control c and client controls c_i (all zero at the start) have the trained parameters' shapes.
A client at rank r receives x (the adapter cut to r) and c (cut the same way), and trains K local
steps; after each optimiser step every trained parameter y is corrected by

    y <- y - eta_l · (c - c_i)

(`fedsim.algorithms.local`; eta_l = train.lr for A and B, train.head_lr for the head). Then

    c_i+ = c_i - c + (x - y) / (K · eta_l),     it uploads  Delta y = y - x  and  Delta c_i = c_i+ - c_i.

Both go through the channel like any payload (quantised, metered, `bytes_up` counts them; SCAFFOLD
doubles the upload) and a lost upload loses both. The server, over the delivered set D of N clients,

    x <- x + eta_g · Σ_{k in D} w_k Delta y_k        (the FedAvg aggregate; eta_g = server_lr)
    c <- c + (1 / N) · Σ_{k in D} Delta c_k

so with every upload delivered c = (1/N) Σ_i c_i after every round (tests/test_algorithms.py). A lost
upload breaks that equality, as it would on the air: its client keeps c_i+ while c never sees it.

Client state: a client's c_i must outlive the round, but in simulation one node may train several
clients (the cohort engine), so the simulator carries c_i for the client: the server process keeps it,
sends it down with the train message and takes the client's c_i+ back from the reply, under
`memory.` keys that never count as traffic (in a deployment the client would keep c_i itself). The
server's c goes down as part of the (metered) downlink.

Components beyond a client's rank are neither trained nor corrected, and their controls are kept.
The control variates live in factor coordinates, so SCAFFOLD needs a merge that keeps them:
`aggregation.method: fedavg-factors` with `average: updates` (svd rotates the basis every round).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedsim.algorithms.base import FederatedAlgorithm, at_ranks, region
from fedsim.algorithms.fedopt import apply_correction, to_space
from fedsim.payload import MEMORY_PREFIX, a_key, b_key

CONTROL_PREFIX = "C."  # the server's control c, cut to the client's ranks (downlink)
DELTA_PREFIX = "dC."  # a client's Delta c_i (uplink)


class ScaffoldConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["scaffold"] = "scaffold"
    server_lr: float = Field(1.0, gt=0, description="Global step size eta_g on the aggregated Delta y (1 = the FedAvg aggregate).")


class Scaffold(FederatedAlgorithm):
    name = "scaffold"
    upload_prefix = DELTA_PREFIX
    upload_copies = 2  # Delta y and Delta c_i have the same shapes

    def setup(self, initial_state) -> None:
        zeros = {a_key(i): np.zeros(a.shape) for i, a in enumerate(initial_state.A)}
        zeros |= {b_key(i): np.zeros(b.shape) for i, b in enumerate(initial_state.B)}
        zeros |= {key: np.zeros(value.shape) for key, value in initial_state.head.items()}
        self.control = zeros
        self.client_controls: dict[int, dict[str, np.ndarray]] = {}

    def _client_control(self, client: int) -> dict[str, np.ndarray]:
        return self.client_controls.setdefault(client, {key: np.zeros_like(value) for key, value in self.control.items()})

    def downlink(self, client, ranks):
        cut = {key: at_ranks(key, value, ranks) for key, value in self.control.items()}
        return {CONTROL_PREFIX + key: value for key, value in cut.items() if value is not None}

    def memory(self, client, ranks):
        cut = {key: at_ranks(key, value, ranks) for key, value in self._client_control(client).items()}
        return {MEMORY_PREFIX + CONTROL_PREFIX + key: value for key, value in cut.items() if value is not None}

    def upload_shapes(self, shapes):
        return {DELTA_PREFIX + key: shape for key, shape in shapes.items() if key in self.control}

    def remember(self, client, arrays):
        own = self._client_control(client)
        for name, value in arrays.items():
            key = name.removeprefix(MEMORY_PREFIX + CONTROL_PREFIX)
            if key in own:
                own[key][region(key, value)] = value

    def server_update(self, global_state, aggregated, uploads, weights):
        for upload in uploads:
            for key, control in self.control.items():
                if DELTA_PREFIX + key in upload:
                    delta = upload[DELTA_PREFIX + key].astype(np.float64)
                    control[region(key, delta)] += delta / self.num_clients
        if not uploads or self.config.server_lr == 1.0:
            return aggregated
        base, start = to_space(aggregated.state, False), to_space(global_state, False)
        return apply_correction(aggregated, base, {key: (self.config.server_lr - 1.0) * (base[key] - start[key]) for key in base})

    def state_dict(self):
        state = {f"c.{key}": value for key, value in self.control.items()}
        for client, controls in sorted(self.client_controls.items()):
            state |= {f"c_i.{client}.{key}": value for key, value in controls.items()}
        return state
