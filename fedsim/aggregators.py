"""The aggregator registry: how the delivered factors of one adapted layer become the global ones.

An aggregator is a per-layer merge function plus what it needs from the clients:

    merge(glob_a, glob_b, trained, weights, deltas, max_rank, rng, statistics) -> fedsim.aggregation.LayerMerge

with `trained[k]` = client k's (A'_k, B'_k) after training (rank r_k <= max_rank), `weights` summing to 1
over the clients that sent the layer, `deltas` True for `average: updates`, and `statistics[name][k]`
= (S_A, S_B), shaped like client k's factors, for every statistic the aggregator declares. A
declared statistic makes each client compute and send it (`F.<key>` for "fisher", metered as sent).
The head is always a weighted mean, and the algorithm's server step follows (`fedsim.algorithms`).
Layers merge in parallel threads (`fedsim.aggregation.merge_layers`), so a merge must not change shared
state; one that draws from `rng` is rerun in layer order, so the draws stay those of a sequential loop.

Built in (formulas in `fedsim.aggregation`): `svd` (product space + truncated SVD, FlexLoRA with
`average: models`), `fedavg-factors` (zero-padded factor means, HetLoRA-style with `models`) and
`fisher` (FedNano's Fisher merging). Yours: `fedsim.register_aggregator(name, merge, ...)`.
Over the air only `fedavg-factors` is allowed: a superposition is the zero-padded factor mean.

This module stays free of numpy and torch: reading a scenario checks the name against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from fedsim.types import FedsimError, load_entry_points

STATISTICS = ("fisher",)  # client statistics a client knows how to compute (fedsim.training, fedsim.nano)


@dataclass(frozen=True)
class Aggregator:
    merge: str | Callable  # "module:function", imported on first use, or the function itself
    client_statistics: tuple[str, ...] = ()
    cohort: bool = True  # works with train.engine: cohort (which computes no client statistics)
    aircomp: bool = False  # is what a superposition computes: the zero-padded factor mean (fedavg-factors) only

    def merge_fn(self) -> Callable:
        if callable(self.merge):
            return self.merge
        module, _, name = self.merge.partition(":")
        return getattr(import_module(module), name)


AGGREGATORS: dict[str, Aggregator] = {
    "svd": Aggregator("fedsim.aggregation:merge_svd"),
    "fedavg-factors": Aggregator("fedsim.aggregation:merge_factors", aircomp=True),
    "fisher": Aggregator("fedsim.aggregation:merge_fisher", client_statistics=("fisher",), cohort=False),
}


ENTRY_POINT_GROUP = "fedsim.aggregators"  # an entry `<method> = "mypackage:AGGREGATOR"` names an Aggregator(merge, client_statistics, cohort)


def load_aggregator_entry_points() -> list[str]:
    """Register the aggregators that installed distributions declare under ENTRY_POINT_GROUP, each under its entry's
    name (a broken one is skipped with one line on stderr); returns their names."""

    def register(name: str, aggregator) -> str:
        if not isinstance(aggregator, Aggregator):
            raise TypeError(f"not a fedsim.aggregators.Aggregator but {type(aggregator).__name__}")
        register_aggregator(name, aggregator.merge, client_statistics=aggregator.client_statistics, cohort=aggregator.cohort)
        return name

    return load_entry_points(ENTRY_POINT_GROUP, register, "aggregator")


def get_aggregator(name: str) -> Aggregator:
    if name not in AGGREGATORS:
        raise FedsimError(f"aggregation.method={name!r} is not a registered aggregator; allowed: {', '.join(AGGREGATORS)}")
    return AGGREGATORS[name]


def wants_fisher(scenario) -> bool:
    """Whether the scenario's clients compute and send a diagonal Fisher estimate of their factors."""
    return "fisher" in get_aggregator(scenario.aggregation.method).client_statistics


def register_aggregator(name: str, merge: Callable, *, client_statistics: tuple[str, ...] = (), cohort: bool = True) -> None:
    """Register a per-layer merge under `name` (see the module docstring for its signature); scenarios
    then accept `aggregation: {method: <name>}` in this process (and the inline engine). Over the air
    (`channel.mode: aircomp`) the server receives the superposition, the zero-padded factor mean, and
    merges nothing, so a registered aggregator is refused there."""
    unknown = set(client_statistics) - set(STATISTICS)
    if unknown:
        raise ValueError(f"client statistics {sorted(unknown)} are not computed by clients; allowed: {', '.join(STATISTICS)}")
    if name in AGGREGATORS and AGGREGATORS[name].merge is not merge:
        raise ValueError(f"an aggregator named {name!r} is already registered")
    cohort = cohort and not client_statistics
    AGGREGATORS[name] = Aggregator(merge, tuple(client_statistics), cohort)
