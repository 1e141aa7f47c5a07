"""Algorithm registry: a new federated algorithm is one file plus one line here (config class, algorithm class).

Both are light (numpy and pydantic), so reading a scenario imports no torch.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from fedsim.algorithms.base import FederatedAlgorithm
from fedsim.algorithms.fedadagrad import FedAdagrad, FedAdagradConfig
from fedsim.algorithms.fedadam import FedAdam, FedAdamConfig
from fedsim.algorithms.fedavg import FedAvg, FedAvgConfig
from fedsim.algorithms.fedavgm import FedAvgM, FedAvgMConfig
from fedsim.algorithms.fedprox import FedProx, FedProxConfig
from fedsim.algorithms.fedyogi import FedYogi, FedYogiConfig
from fedsim.algorithms.scaffold import Scaffold, ScaffoldConfig
from fedsim.types import add_named, load_entry_point_pairs

ALGORITHMS: dict[str, tuple[type, type[FederatedAlgorithm]]] = {
    "fedavg": (FedAvgConfig, FedAvg),
    "fedprox": (FedProxConfig, FedProx),
    "scaffold": (ScaffoldConfig, Scaffold),
    "fedavgm": (FedAvgMConfig, FedAvgM),
    "fedadam": (FedAdamConfig, FedAdam),
    "fedyogi": (FedYogiConfig, FedYogi),
    "fedadagrad": (FedAdagradConfig, FedAdagrad),
}

CLIENT_SIDE = ("fedprox", "scaffold")  # change local training (fedsim.algorithms.local)


def config_union():
    """The pydantic type of a scenario's `algorithm:` section: the registered configs, told apart by `name`."""
    return Annotated[Union[tuple(cfg for cfg, _ in ALGORITHMS.values())], Field(discriminator="name")]  # type: ignore[valid-type]  # noqa: UP007


AlgorithmConfig = config_union()


def add_algorithm(config_cls: type, algorithm_cls: type[FederatedAlgorithm]) -> str:
    """Register an algorithm (the registry's part of `fedsim.register_algorithm`); returns its name."""
    return add_named(ALGORITHMS, config_cls, algorithm_cls, "algorithm", base=FederatedAlgorithm)


ENTRY_POINT_GROUP = "fedsim.algorithms"  # a distribution's entry point here names a (config class, algorithm class) pair


def load_entry_points() -> list[str]:
    """Register the algorithms that installed distributions declare under ENTRY_POINT_GROUP (a broken one is skipped
    with one line on stderr); returns their names."""
    return load_entry_point_pairs(ENTRY_POINT_GROUP, add_algorithm, "algorithm")


def build_algorithm(config, method: str, num_clients: int) -> FederatedAlgorithm:
    return ALGORITHMS[config.name][1](config, method, num_clients)
