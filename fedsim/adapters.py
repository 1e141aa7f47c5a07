"""The adapter-kind registry: what a client holds, how it trains, and what it supports.

    lora   PEFT LoRA in the backbone's target modules; the client runs the whole model
           (fedsim.model.LoraClassifier, fedsim.training.train_lora; the cohort engine batches clients)
    nano   FedNano's NanoAdapters on the token embeddings' output; the backbone and head stay on the
           server, and the client trains by split computation (fedsim.nano)

A kind is a model builder, a local-training function and what the rest of the simulator must know:

    build(scenario, num_labels, dtype) -> a model with LoraClassifier's interface (layers, factor, head, ...)
    train(runtime, payload, client_id, server_round) -> (upload, metrics)

Yours: `fedsim.register_adapter(name, build, train, ...)`, then `adapter: {kind: <name>}`. This module
stays free of torch: reading a scenario checks the kind against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Literal

from fedsim.payload import HEAD_KEYS
from fedsim.types import FedsimError, load_entry_points


def _resolve(target: str | Callable) -> Callable:
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(import_module(module), name)


@dataclass(frozen=True)
class AdapterKind:
    build: str | Callable  # "module:function" (imported on first use) or the function
    train: str | Callable
    server_side: tuple[str, ...] = ()  # payload keys that stay on the server: never broadcast, uploaded or metered
    cohort: bool = True  # works with train.engine: cohort (which batches LoRA factors per row)
    aircomp: bool = True  # its upload can be superposed over the air
    client_algorithms: bool = True  # supports algorithms that change local training (FedProx, SCAFFOLD)
    gpu: bool = True
    rank_cap: Literal["layers", "hidden"] = "layers"  # what bounds adapter.max_rank: the adapted layers' dims, or the hidden size
    layerwise: bool = False  # runs the backbone's blocks one by one: only families that allow it (fedsim.backbones)
    adapted_layers: int | None = None  # a fixed number of rank-carrying "layers" (nano: one per text stream); None: one per target module
    rank_sets_upload: bool = True  # the upload is what the ranks set; False (nano: mostly split-computation activations) refuses policies that price it

    def build_fn(self) -> Callable:
        return _resolve(self.build)

    def train_fn(self) -> Callable:
        return _resolve(self.train)


ADAPTERS: dict[str, AdapterKind] = {
    "lora": AdapterKind("fedsim.model:build_lora", "fedsim.training:train_lora"),
    "nano": AdapterKind(
        "fedsim.nano:build_nano",
        "fedsim.nano:split_train",
        server_side=HEAD_KEYS,
        cohort=False,
        aircomp=False,
        client_algorithms=False,
        gpu=False,
        rank_cap="hidden",
        layerwise=True,
        adapted_layers=2,  # fedsim.nano.STREAMS
        rank_sets_upload=False,
    ),  # fmt: skip
}


def adapter_kind(scenario) -> AdapterKind:
    name = scenario.adapter.kind
    if name not in ADAPTERS:
        raise FedsimError(f"adapter.kind={name!r} is not a registered adapter kind; allowed: {', '.join(ADAPTERS)}")
    return ADAPTERS[name]


def register_adapter(name: str, build: Callable | str, train: Callable | str, **supports) -> None:
    """Register an adapter kind (see the module docstring); `supports`: AdapterKind's flags."""
    add_adapter(name, AdapterKind(build, train, **supports))


def add_adapter(name: str, kind: AdapterKind) -> str:
    if not isinstance(kind, AdapterKind):
        raise TypeError(f"not a fedsim.adapters.AdapterKind but {type(kind).__name__}")
    if name in ADAPTERS and ADAPTERS[name] != kind:
        raise ValueError(f"an adapter kind named {name!r} is already registered")
    ADAPTERS[name] = kind
    return name


ENTRY_POINT_GROUP = "fedsim.adapters"  # an entry `<kind> = "mypackage:KIND"` names an AdapterKind(build, train, flags...)


def load_adapter_entry_points() -> list[str]:
    """Register the adapter kinds that installed distributions declare under ENTRY_POINT_GROUP, each under its entry's
    name (a broken one is skipped with one line on stderr); returns their names."""
    return load_entry_points(ENTRY_POINT_GROUP, add_adapter, "adapter")
