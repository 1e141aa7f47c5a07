"""Plugins from the user's own code: register a rank policy, a federated algorithm, a channel model, a task, an aggregator or a backbone family
without editing fedsim.

In a script or notebook (this process, and the inline engine):

    import fedsim
    from policies.base import RankPolicy

    class HalfConfig(pydantic.BaseModel):
        name: Literal["half"] = "half"

    @fedsim.register_policy(HalfConfig)
    class HalfPolicy(RankPolicy):
        def ranks(self, observation):
            return np.full((observation.n_clients, observation.n_layers), observation.max_rank // 2)

    fedsim.run("scenarios/quickstart.yaml", {"policy": {"name": "half"}, "engine": "inline"})

For every process (sweep workers, Flower's Ray actors, `fedsim` on the command line), declare it in
your package's pyproject.toml instead; fedsim loads the group whenever it reads a scenario:

    [project.entry-points."fedsim.policies"]
    half = "mypackage.policies:HALF"      # HALF = (HalfConfig, HalfPolicy)

A channel model, an algorithm or a task the same way, under `fedsim.channels`, `fedsim.algorithms` or
`fedsim.tasks` (a (config class, class) pair each); an aggregator under `fedsim.aggregators` (the entry's name is
the method, its object a `fedsim.aggregators.Aggregator`), an adapter kind under `fedsim.adapters` (an
`AdapterKind`), a backbone family under `fedsim.backbones` (the entry's name is the model_type, its object a Backbone).
"""

from __future__ import annotations

# What this process registered from its own code, by kind: other processes (sweep workers, Flower's Ray actors,
# SuperNodes) do not run that code, so a scenario using one of these must run here (`needs_this_process`).
REGISTERED_HERE: dict[str, set[str]] = {kind: set() for kind in ("policy", "algorithm", "channel", "task", "aggregator", "adapter", "backbone")}


def needs_this_process(scenario) -> list[str]:
    """The parts of `scenario` registered in this process with `fedsim.register_*`, as `field=value` strings."""
    used = [
        f"{field}={value}"
        for kind, field, value in (
            ("policy", "policy.name", scenario.policy.name),
            ("algorithm", "algorithm.name", scenario.algorithm.name),
            ("channel", "channel.model", getattr(scenario.channel, "model", None)),
            ("task", "task.name", scenario.task.name),
            ("aggregator", "aggregation.method", scenario.aggregation.method),
            ("adapter", "adapter.kind", scenario.adapter.kind),
        )
        if value in REGISTERED_HERE[kind]
    ]
    if REGISTERED_HERE["backbone"]:
        from fedsim.backbone_check import backbone_config

        model_type = getattr(backbone_config(scenario.model.backbone), "model_type", None)
        if model_type in REGISTERED_HERE["backbone"]:
            used.append(f"model.backbone={scenario.model.backbone} (model_type {model_type}, whose family you registered)")
    return used


def refuse_other_processes(scenario, where: str, allowed: str) -> None:
    """One line if `scenario` uses a part registered in this process and `where` runs it in others."""
    used = needs_this_process(scenario)
    if used:
        from fedsim.types import FedsimError

        raise FedsimError(
            f"{', '.join(used)}: registered from this process's own code (fedsim.register_*), which {where} does not run; "
            f"allowed: {allowed} (or declare it as an entry point of your package: see fedsim.plugins)"
        )


def register_policy(config_cls: type, policy_cls: type | None = None):
    """Register a rank policy under its config's `name`; usable as a decorator on the policy class.

    `config_cls`: a pydantic model with `name: Literal["<name>"] = "<name>"` (and the policy's
    fields, all defaulted); `policy_cls`: a `policies.base.RankPolicy` subclass taking that config.
    """

    def register(cls: type) -> type:
        from fedsim.config import refresh_policy_schema
        from policies.registry import add_policy

        REGISTERED_HERE["policy"].add(add_policy(config_cls, cls))
        refresh_policy_schema()
        return cls

    return register(policy_cls) if policy_cls is not None else register


def register_algorithm(config_cls: type, algorithm_cls: type | None = None):
    """Register a federated algorithm under its config's `name`; usable as a decorator on the class.

    `config_cls`: a pydantic model with `name: Literal["<name>"] = "<name>"`; `algorithm_cls`: a
    `fedsim.algorithms.base.FederatedAlgorithm` subclass (server hooks; `server_update` is the usual one).
    Scenarios then accept `algorithm: {name: <name>, ...}` in this process (and the inline engine).
    """

    def register(cls: type) -> type:
        from fedsim.algorithms.registry import add_algorithm
        from fedsim.config import refresh_algorithm_schema

        REGISTERED_HERE["algorithm"].add(add_algorithm(config_cls, cls))
        refresh_algorithm_schema()
        return cls

    return register(algorithm_cls) if algorithm_cls is not None else register


def register_channel(config_cls: type, channel_cls: type | None = None):
    """Register a channel model under its config's `model`; usable as a decorator on the channel class.

    `config_cls`: a pydantic model with `model: Literal["<name>"] = "<name>"` (and the channel's fields, all
    defaulted; uploads are encoded as the scenario's `quantization:` says, whatever the channel); `channel_cls`: a
    `channels.base.Channel` subclass built as `channel_cls(config, seed)`. Scenarios then accept
    `channel: {model: <name>, ...}` in this process (and the inline engine).
    """

    def register(cls: type) -> type:
        from channels.registry import add_channel
        from fedsim.config import refresh_channel_schema

        REGISTERED_HERE["channel"].add(add_channel(config_cls, cls))
        refresh_channel_schema()
        return cls

    return register(channel_cls) if channel_cls is not None else register


def register_task(config_cls: type, task_cls: type | None = None):
    """Register a task under its config's `name`; usable as a decorator on the task class.

    `config_cls`: a pydantic model with `name: Literal["<name>"] = "<name>"` (and the task's fields, all
    defaulted); `task_cls`: a `fedsim.tasks.Task` subclass taking that config (load, encode, loss, score).
    Scenarios then accept `task: {name: <name>, ...}` in this process (and the inline engine).
    """

    def register(cls: type) -> type:
        from fedsim.config import refresh_task_schema
        from fedsim.tasks.registry import add_task

        REGISTERED_HERE["task"].add(add_task(config_cls, cls))
        refresh_task_schema()
        return cls

    return register(task_cls) if task_cls is not None else register


def register_aggregator(name: str, merge, *, client_statistics: tuple[str, ...] = (), cohort: bool = True) -> None:
    """Register a per-layer merge as `aggregation.method: <name>` (signature in `fedsim.aggregators`).

    `client_statistics=("fisher",)` makes each client send its diagonal Fisher estimate, passed to `merge`
    as `statistics["fisher"]`; such an aggregator needs the per-client engine. Every registered aggregator
    needs a digital uplink: over the air the server receives the zero-padded factor mean and merges nothing.
    """
    from fedsim.aggregators import register_aggregator as add

    add(name, merge, client_statistics=client_statistics, cohort=cohort)
    REGISTERED_HERE["aggregator"].add(name)


def register_adapter(name: str, build, train, **supports) -> None:
    """Register an adapter kind as `adapter: {kind: <name>}`: `build(scenario, num_labels, dtype)` returns its model,
    `train(runtime, payload, client_id, server_round)` its local training (upload, metrics); `supports` are
    `fedsim.adapters.AdapterKind`'s flags (cohort, aircomp, client_algorithms, gpu, server_side, rank_cap,
    adapted_layers, rank_sets_upload)."""
    from fedsim.adapters import register_adapter as add

    add(name, build, train, **supports)
    REGISTERED_HERE["adapter"].add(name)


def register_backbone(model_type: str, family) -> None:
    """Use `family` (a `fedsim.backbones.base.Backbone`: pooling, default LoRA targets, prefix blocks) for
    every backbone whose HF config has this `model_type`."""
    from fedsim.backbones.registry import FAMILIES

    FAMILIES[model_type] = family
    REGISTERED_HERE["backbone"].add(model_type)
