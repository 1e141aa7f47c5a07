"""`fedavg`: Federated Averaging (McMahan et al. 2017): the new global adapter is the round's aggregate."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from fedsim.algorithms.base import FederatedAlgorithm


class FedAvgConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["fedavg"] = "fedavg"


class FedAvg(FederatedAlgorithm):
    name = "fedavg"
