"""`fedprox`: FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks").

Each client minimises its loss plus the proximal term

    (mu / 2) · ||theta - theta_g||²

over the parameters it trains (its rank's A and B components and the head), theta_g being what it
received. The term's gradient mu (theta - theta_g) is added to the loss gradient before the local
optimiser's step (`fedsim.algorithms.local`), as a term of the loss would be; the local optimiser
stays Adam. The server side is FedAvg. mu = 0 is FedAvg exactly (tests/test_algorithms.py).
Li et al. tune mu in {0.001, 0.01, 0.1, 1}; 0.01 is the default here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fedsim.algorithms.base import FederatedAlgorithm


class FedProxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["fedprox"] = "fedprox"
    mu: float = Field(0.01, ge=0, description="Proximal weight mu of (mu/2)·||theta - theta_global||² (0 = FedAvg).")


class FedProx(FederatedAlgorithm):
    name = "fedprox"
