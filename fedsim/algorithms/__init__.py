"""Federated algorithms beyond FedAvg: one file per method, registered in `fedsim.algorithms.registry`.

Client side: `fedprox` (proximal term), `scaffold` (control variates). Server side, on the round's
pseudo-gradient: `fedavgm`, `fedadam`, `fedyogi`, `fedadagrad` (`fedsim.algorithms.fedopt` says in
which space they act when clients train different ranks). `fedavg` is the default.
"""

from fedsim.algorithms.registry import ALGORITHMS, CLIENT_SIDE, AlgorithmConfig, build_algorithm

__all__ = ["ALGORITHMS", "CLIENT_SIDE", "AlgorithmConfig", "build_algorithm"]
