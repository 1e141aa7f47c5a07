"""The scenario: one pydantic model, loaded from YAML, every field defaulted, unknown keys rejected.

`load_scenario(path, overrides)` is the only way in; every failure becomes one
`FedsimError` line naming the file, the field, the value and what is allowed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from channels import ChannelConfig
from channels.quantization import QuantizationConfig
from channels.registry import config_union as channel_union
from fedsim.adapters import ADAPTERS
from fedsim.aggregators import AGGREGATORS
from fedsim.algorithms import ALGORITHMS, CLIENT_SIDE, AlgorithmConfig
from fedsim.tasks.classification import ClassificationConfig
from fedsim.tasks.registry import TASKS
from fedsim.tasks.registry import config_union as task_union
from fedsim.types import FedsimError
from policies import POLICIES, PolicyConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PartitionConfig(_Section):
    kind: Literal["iid", "dirichlet", "quantity_skew"] = Field("dirichlet", description="How training examples are split across clients.")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration: small = very non-IID labels (dirichlet), very unequal sizes (quantity_skew).")
    min_examples: int = Field(
        8, ge=1, description="Every client gets at least this many examples (dirichlet: a starved client is topped up from the largest client's last classes)."
    )


class DataConfig(_Section):
    dataset: str = Field(
        "banking77",
        description="'banking77' (embedded) or a directory holding train.csv and test.csv.",
    )
    text_column: str = Field("text", description="CSV column with the input text.")
    label_column: str = Field("category", description="CSV column with the class label.")
    max_length: int = Field(64, ge=8, description="Texts are truncated to this many tokens; batches pad only to their own longest.")
    labels: list[str] | dict[str, list[str]] | None = Field(
        None,
        min_length=2,
        description="A smaller task from the data set's labels, in both splits: a list keeps only those labels; a mapping "
        "{new_label: [labels]} merges each list into one new label and drops the rest (e.g. a binary task from BANKING77 "
        "intents, scenarios/label_skew.yaml); null = all labels.",
    )
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    eval_samples: int | None = Field(500, ge=1, description="Per-round server evaluation on a fixed random subset of this size (null = whole test set).")
    eval_full_final: bool = Field(True, description="Evaluate the last round on the whole test set.")
    validation_samples: int = Field(
        0,
        ge=0,
        description="Training examples held out from every client (before partitioning) as a validation split: "
        "rank policies then observe and are rewarded by validation metrics, never the test split, and rounds.csv gets "
        "val_loss, val_accuracy and reward. Learning a policy (train-policy, learn: true) needs it; 0 = none. The clients' "
        "partitions are drawn from what is left, so runs with another value train on other partitions: compare runs that share it.",
    )


class ModelConfig(_Section):
    backbone: str = Field("minilm", description="'minilm' (embedded all-MiniLM-L6-v2), 'tiny-random' (for tests), or an HF model id / local path.")


class AdapterConfig(_Section):
    kind: str = Field(
        "lora",
        description="'lora': LoRA in the backbone, the client holds the whole model; 'nano': FedNano NanoAdapters on the "
        "token embeddings' output, the backbone and head stay on the server (split computation, activations metered); "
        "or a kind registered with fedsim.register_adapter (fedsim/adapters.py).",
    )

    @field_validator("kind")
    @classmethod
    def _registered_kind(cls, kind: str) -> str:
        if kind not in ADAPTERS:
            raise ValueError(f"{kind!r} is not a registered adapter kind; allowed: {', '.join(ADAPTERS)}")
        return kind

    target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="Module names LoRA is injected into (null = the backbone family's default: query/value for BERT-style "
        "encoders, q_proj/v_proj for OPT, Llama, Qwen and Mistral, c_attn for GPT-2; see fedsim/backbones/registry.py).",
    )
    max_rank: int = Field(8, ge=1, description="The largest rank a policy may give a layer; the global adapter's rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator: the update is (alpha / max_rank) * B A.")
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        min_length=1,
        description="Transformer layer indices to adapt (null = all; [] is refused). Adapting only upper layers lets fedsim cache "
        "the frozen layers below them once per example, which makes training much faster.",
    )


class TrainConfig(_Section):
    local_steps: int = Field(5, ge=1, description="Optimizer steps each selected client takes per round.")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, ge=0, description="Adam learning rate for the LoRA factors (0 = frozen: the clients send no change).")
    head_lr: float = Field(5e-3, ge=0, description="Adam learning rate for the classification head (0 = frozen).")
    engine: Literal["per-client", "cohort"] = Field(
        "per-client",
        description="'per-client': each client trains in its own ClientApp call; 'cohort': the round's clients train "
        "together in one batched pass (one ClientApp call per round; same results within float tolerance, faster).",
    )
    cohort_size: int | None = Field(
        None,
        ge=1,
        description="With engine 'cohort': at most this many clients per batched ClientApp call, the round's selected clients "
        "cut in their selection order, each cohort sent to its first client's node (null = the whole round in one call). "
        "Bounds what one call holds per client (factors, head, Adam states) and spreads a round over several SuperNodes; a "
        "client's numbers move by float rounding only (padding widths differ).",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="'bf16' runs forward/backward under bfloat16 autocast (faster on CPUs with bf16 support, not exact)."
    )
    prefix_cache: bool = Field(
        True,
        description="Cache the hidden states entering the lowest adapted layer (exact in fp32; under bf16 the cached states are "
        "bf16, logits differ by ~1e-3; used only when no adapter sits below it, on BERT, RoBERTa and XLM-R encoders).",
    )


class ClientsConfig(_Section):
    num_clients: int = Field(20, ge=1, description="Total simulated clients.")
    per_round: int = Field(5, ge=1, description="Clients sampled each round.")
    availability: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Probability that a client is online in a round, independently per client and round (Bernoulli "
        "availability). The server samples per_round of the online clients (all of them when fewer are online) and, "
        "while none is, waits for the next check-in (a new draw). rounds.csv then records clients_online.",
    )
    availability_trace: str | None = Field(
        None,
        description="A CSV file of online intervals in rounds (client,from_round,to_round; fedsim/availability.py), as "
        "FedScale's availability traces: a client is online only inside its intervals (then with probability "
        "`availability`). Relative to the directory you run fedsim in; null = every client always online.",
    )

    @property
    def always_online(self) -> bool:
        return self.availability >= 1.0 and self.availability_trace is None


class AggregationConfig(_Section):
    method: str = Field(
        "svd",
        description="The aggregator (fedsim.aggregators): 'svd': weighted mean in product space (B_k A_k), refactored by "
        "truncated SVD to max_rank; 'fedavg-factors': average zero-padded A and B separately; 'fisher': Fisher merging "
        "of A and B, each client also sends its diagonal Fisher estimate (FedNano); or one registered with "
        "fedsim.register_aggregator.",
    )

    @field_validator("method")
    @classmethod
    def _registered(cls, method: str) -> str:
        if method not in AGGREGATORS:
            raise ValueError(f"{method!r} is not a registered aggregator; allowed: {', '.join(AGGREGATORS)}")
        return method

    average: Literal["updates", "models"] = Field(
        "updates",
        description="'updates' (FedAvg): each client sends its change to the part of the adapter it received, and the "
        "server adds the weighted mean change to the global adapter, so untrained components are kept; 'models': "
        "the mean of the clients' adapters replaces the global one (svd = FlexLoRA, fedavg-factors = HetLoRA-style "
        "zero padding), which erases components a low-rank client did not receive.",
    )


MAX_ROUNDS = 1_000_000  # a bound, so that a typo like 1e22 is an error rather than a run that never ends


QUANTIZATION_FIELDS = ("bits_per_param", "rounding")
ChannelUnion = channel_union()
TaskUnion = task_union()


class Scenario(_Section):
    """A complete, reproducible description of one federated fine-tuning run."""

    name: str = Field("scenario", description="Label used in run directory names and plots.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds partitioning, sampling, channel draws, initialisation and training.")
    rounds: int = Field(20, ge=1, le=MAX_ROUNDS, description="Federated rounds.")
    engine: Literal["flower", "inline"] = Field(
        "flower",
        description="'flower': Flower's simulation engine (Ray); 'inline': the same ServerApp and ClientApp called in-process (faster start, identical ledger).",
    )
    threads: int | None = Field(None, ge=1, description="torch threads for training (null = all cores).")
    ray_address: str | None = Field(
        None,
        description="engine: flower only: run Flower's simulation engine on this running Ray cluster (host:port from "
        "`ray start --head`, or auto) instead of starting one; the ClientApp actor asks for `threads` CPUs (default 1 "
        "there), and the nodes need fedsim installed and the scenario's paths at the same place. Changes no result.",
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu",
        description="Where clients train and the server evaluates: 'cpu' (default), 'cuda' (one GPU: the frozen backbone "
        "once in GPU memory, every client's adapter and optimizer state beside it), or 'auto' (cuda when available). "
        "Rank policies stay on the CPU. With train.precision=bf16 the GPU runs bfloat16 autocast.",
    )
    tolerate_client_errors: bool = Field(
        False,
        description="false: a client that fails stops the run with one line naming the client, round and cause; "
        "true: the failure is logged in clients.csv (drop_reason=client-error, error=cause) and the round goes on.",
    )
    task: TaskUnion = Field(  # type: ignore[valid-type]
        default_factory=ClassificationConfig,
        description="What is learned: 'classification' (a text to one of data.label_column's labels, cross-entropy, "
        "accuracy); 'causal-lm' (a decoder LM learns to generate the label's name after a prompt with the text: loss on the "
        "answer tokens, exact match of the greedy answer; prompt, answer, max_new_tokens); or a task registered with "
        "fedsim.register_task (fedsim/tasks/).",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    clients: ClientsConfig = Field(default_factory=ClientsConfig)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    algorithm: AlgorithmConfig = Field(  # type: ignore[valid-type]
        default_factory=lambda: ALGORITHMS["fedavg"][0](),
        description="The federated algorithm: fedavg, fedprox (mu), scaffold (server_lr), or a server optimiser on the "
        "round's pseudo-gradient: fedavgm (server_lr, momentum), fedadam / fedyogi (server_lr, beta_1, beta_2, tau), "
        "fedadagrad (server_lr, beta_1, tau). See docs and fedsim/algorithms/.",
    )
    channel: ChannelUnion = Field(default_factory=lambda: ChannelConfig())  # type: ignore[valid-type]
    quantization: QuantizationConfig = Field(
        default_factory=QuantizationConfig, description="How clients encode their uploads (bits per parameter, rounding), whatever the channel model."
    )
    policy: PolicyConfig = Field(default_factory=lambda: POLICIES["fixed"][0]())  # type: ignore[valid-type]

    @model_validator(mode="before")
    @classmethod
    def _quantization_from_channel(cls, data):
        """The older spelling `channel.bits_per_param` / `channel.rounding` is read as `quantization.*`."""
        if not isinstance(data, dict) or not isinstance(data.get("channel"), dict):
            return data
        moved = {k: data["channel"][k] for k in QUANTIZATION_FIELDS if k in data["channel"]}
        if not moved:
            return data
        quantization = data.get("quantization") if isinstance(data.get("quantization"), dict) else {}
        clash = [k for k in moved if k in quantization and quantization[k] != moved[k]]
        if clash:
            raise ValueError(f"channel.{clash[0]} and quantization.{clash[0]} disagree; set it once, under quantization")
        channel = {k: v for k, v in data["channel"].items() if k not in QUANTIZATION_FIELDS}
        return {**data, "channel": channel, "quantization": {**moved, **quantization}}

    @model_validator(mode="after")
    def _cross_field_checks(self) -> Scenario:
        if self.ray_address is not None and self.engine != "flower":
            raise ValueError(f"ray_address={self.ray_address} needs engine=flower (the inline engine runs in this process); allowed: --set engine=flower")
        if self.clients.per_round > self.clients.num_clients:
            raise ValueError(f"clients.per_round={self.clients.per_round} exceeds clients.num_clients={self.clients.num_clients}; allowed: 1..num_clients")
        rank = getattr(self.policy, "rank", None)
        if rank is not None and rank > self.adapter.max_rank:
            raise ValueError(f"policy.rank={rank} exceeds adapter.max_rank={self.adapter.max_rank}; allowed: 0..{self.adapter.max_rank}")
        aggregator = AGGREGATORS[self.aggregation.method]
        method = f"aggregation.method={self.aggregation.method}"
        kind, adapter = f"adapter.kind={self.adapter.kind}", ADAPTERS[self.adapter.kind]
        task, task_field = TASKS[self.task.name][1], f"task.name={self.task.name}"
        if self.train.engine not in task.engines:
            raise ValueError(f"train.engine={self.train.engine} does not support {task_field}; allowed: train.engine={' or '.join(task.engines)}")
        if task.adapter_kinds is not None and self.adapter.kind not in task.adapter_kinds:
            raise ValueError(f"{kind} does not support {task_field}; allowed: adapter.kind={' or '.join(task.adapter_kinds)}")
        if self.train.cohort_size is not None and self.train.engine != "cohort":
            raise ValueError(
                f"train.cohort_size={self.train.cohort_size} needs train.engine=cohort (per-client training calls one client at a time); allowed: --set train.engine=cohort"
            )
        if self.train.engine == "cohort" and (not adapter.cohort or not aggregator.cohort):
            field = kind if not adapter.cohort else method
            raise ValueError(f"train.engine=cohort does not support {field}; allowed: train.engine=per-client")
        over_the_air = getattr(self.channel, "mode", "digital") == "aircomp"
        if over_the_air and not adapter.aircomp:
            raise ValueError(f"channel.mode=aircomp does not support {kind} (AirComp receives only the sum of the updates); allowed: channel.mode=digital")
        if over_the_air and not aggregator.aircomp:
            raise ValueError(
                f"channel.mode=aircomp does not support {method} (the server receives only the superposition, the zero-padded "
                "factor mean, and merges nothing); allowed: aggregation.method=fedavg-factors, or channel.mode=digital"
            )
        if getattr(type(self.policy), "prices_uploads", False) and not adapter.rank_sets_upload:
            allowed = " or ".join(name for name, (config, _) in POLICIES.items() if not getattr(config, "prices_uploads", False))
            raise ValueError(
                f"policy.name={self.policy.name} sizes ranks by what a client's upload costs on the channel, but most of {kind}'s "
                f"upload is split-computation activations, which the rank does not set and the policy does not price; allowed "
                f"with {kind}: policy.name={allowed}"
            )
        algorithm = self.algorithm.name
        if algorithm in CLIENT_SIDE and not adapter.client_algorithms:
            raise ValueError(f"algorithm.name={algorithm} changes local training, which {kind} does not support; allowed: adapter.kind=lora")
        if algorithm == "scaffold" and (self.aggregation.method != "fedavg-factors" or self.aggregation.average != "updates"):
            raise ValueError(
                f"algorithm.name=scaffold needs aggregation.method=fedavg-factors with average=updates (its control variates live in "
                f"factor coordinates; {self.aggregation.method}/{self.aggregation.average} does not keep them); allowed: "
                "--set aggregation.method=fedavg-factors --set aggregation.average=updates"
            )
        if algorithm == "scaffold" and over_the_air:
            raise ValueError(
                "algorithm.name=scaffold is not modelled over channel.mode=aircomp (the control variates would need their own superposition); allowed: channel.mode=digital"
            )
        if self.device != "cpu" and not adapter.gpu:
            raise ValueError(f"device={self.device} does not support {kind} (it trains on the CPU); allowed: device=cpu")
        if getattr(self.policy, "learn", False) and self.data.validation_samples == 0:
            raise ValueError("policy.learn=true needs data.validation_samples > 0 (the reward must not read the test split); allowed: e.g. 500")
        for r in getattr(self.policy, "ranks", None) or []:
            if not 0 <= r <= self.adapter.max_rank:
                raise ValueError(f"policy.ranks contains {r}; allowed: 0..{self.adapter.max_rank}")
        return self

    @field_validator("name")
    @classmethod
    def _name_is_a_directory_label(cls, value: str) -> str:
        if not value or value.startswith(".") or any(c in value for c in "/\\") or any(ord(c) < 32 or c == "\x7f" for c in value) or len(value) > 100:
            raise ValueError(
                f"{value!r} is not allowed: the name labels the run directory, so it must be 1-100 characters "
                "without '/', '\\' or control characters, and not start with '.'"
            )
        return value

    @model_validator(mode="after")
    def _finite_numbers(self) -> Scenario:
        problem = non_finite_field(self)
        if problem:
            raise ValueError(problem)
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def non_finite_field(model: BaseModel, prefix: str = "") -> str | None:
    """The first float field (any depth, list items too) holding NaN or an infinity, described in one line; None if all are finite.

    An infinity is allowed only where it is the field's own default (e.g. a policy's `deadline_s: inf` = no deadline).
    """
    for name, info in type(model).model_fields.items():
        problem = _non_finite_value(getattr(model, name), f"{prefix}{name}", info.default)
        if problem:
            return problem
    return None


def _non_finite_value(value: Any, path: str, default: Any) -> str | None:
    if isinstance(value, BaseModel):
        return non_finite_field(value, path + ".")
    if isinstance(value, float) and not math.isfinite(value):
        if math.isinf(value) and isinstance(default, float) and value == default:
            return None
        hint = " (null means none)" if default is None else ""
        return f"{path} = {value} is invalid: must be a finite number{hint}"
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _non_finite_value(item, f"{path}[{i}]", None)
            if problem:
                return problem
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _non_finite_value(item, f"{path}.{key}", None)
            if problem:
                return problem
    return None


def boolean_for_number(raw: Any, model: Any, prefix: str = "") -> str | None:
    """The first field the input gives as true/false where the scenario wants a number (pydantic would read true as 1)."""
    if not isinstance(raw, dict) or not isinstance(model, BaseModel):
        return None
    fields = type(model).model_fields
    for key, value in raw.items():
        if key not in fields:
            continue
        path, attr = f"{prefix}{key}", getattr(model, key)
        pairs = list(zip(value, attr)) if isinstance(value, list) and isinstance(attr, list) else [(value, attr)]
        for i, (given, parsed) in enumerate(pairs):
            if isinstance(given, bool) and isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
                where = path if len(pairs) == 1 and not isinstance(value, list) else f"{path}[{i}]"
                return f"{where} = {str(given).lower()} is invalid: expected a number, not a boolean"
        problem = boolean_for_number(value, attr, path + ".")
        if problem:
            return problem
    return None


SWEEP_FILE_KEYS = ("base", "grid", "zip", "seeds")  # a sweep file's own keys (fedsim.sweeps), which no scenario has


def _describe_validation_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        if len(err["loc"]) == 1 and loc in SWEEP_FILE_KEYS:
            return f"{source}: unknown key '{loc}': this is a sweep file (base, grid, zip, seeds); run it with `fedsim sweep {source}`"
        allowed = _allowed_keys(err["loc"][:-1])
        if not allowed:
            return f"{source}: unknown key '{loc}'"
        import difflib

        close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        hint = f"did you mean '{'.'.join([*loc.split('.')[:-1], close[0]])}'? " if close else ""
        return f"{source}: unknown key '{loc}'; {hint}allowed: {', '.join(allowed)}"
    if err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
        return f"{source}: {msg}" if not loc else f"{source}: {loc}: {msg}"
    names = _section_names(loc.rsplit(".", 1)[0] if loc.endswith(".name") else loc)
    if err["type"] == "union_tag_not_found" and names:  # a partial section (--set policy.rank=2) names no kind
        return f"{source}: {loc}.name is missing: a {loc} section (or --set {loc}.FIELD) must name its kind, e.g. {loc}={{name: {names[0]}, ...}}; allowed: {', '.join(names)}"
    if err["type"] in ("union_tag_invalid", "literal_error") and names and (loc.endswith(".name") or err["type"] == "union_tag_invalid"):
        section = loc.removesuffix(".name")
        got = err.get("input")
        got = got.get("name") if isinstance(got, dict) else got
        return f"{source}: {section}.name={got!r} is not registered; allowed: {', '.join(names)}"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    return f"{source}: {loc or '(top level)'} = {shown} is invalid: {msg}"


def _section_names(section: str) -> list[str]:
    """The registered kinds of a scenario section chosen by `name` (policy, algorithm, task, channel), else []."""
    from channels import CHANNELS
    from fedsim.algorithms import ALGORITHMS
    from fedsim.tasks import TASKS
    from policies import POLICIES

    return list({"policy": POLICIES, "algorithm": ALGORITHMS, "task": TASKS, "channel": CHANNELS}.get(section, {}))


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation admits (through Optional, unions and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _allowed_keys(parents: tuple) -> list[str]:
    """The keys the section at `parents` (an error location without its last part) accepts; [] when not a section."""
    models: list[type[BaseModel]] = [Scenario]
    for part in parents:
        if len(models) > 1:  # a tagged union: pydantic's location names the member by its tag
            models = [m for m in models if getattr(m.model_fields.get("name"), "default", None) == part]
            continue
        field = models[0].model_fields.get(part) if models else None
        models = _models_in(field.annotation) if field is not None else []
    return sorted(models[0].model_fields) if len(models) == 1 else []


# Discriminator tags pydantic inserts into error locations of tagged unions; users never write them.
_UNION_TAGS: set[str] = set()


def _register_union_tags() -> None:
    from channels import CHANNELS
    from policies import POLICIES

    _UNION_TAGS.update(CHANNELS, POLICIES, ALGORITHMS, TASKS)


def _replace_union(field: str, union) -> None:
    """Give a scenario section the registries' current union and rebuild the model. The field's old
    discriminator (kept in its metadata) must go too: wrapped around the new union it would reject it."""
    old = Scenario.model_fields[field]
    Scenario.model_fields[field] = FieldInfo.from_annotated_attribute(union, Field(default_factory=old.default_factory, description=old.description))
    Scenario.model_rebuild(force=True)
    _register_union_tags()


def refresh_policy_schema() -> None:
    """Rebuild the scenario model after a policy was registered (`fedsim.register_policy`, entry points),
    so that `policy: {name: ...}` accepts it everywhere a scenario is read."""
    from policies.registry import config_union

    _replace_union("policy", config_union())


def refresh_channel_schema() -> None:
    """Rebuild the scenario model after a channel model was registered (`fedsim.register_channel`)."""
    _replace_union("channel", channel_union())


def refresh_algorithm_schema() -> None:
    """Rebuild the scenario model after an algorithm was registered (`fedsim.register_algorithm`)."""
    from fedsim.algorithms.registry import config_union

    _replace_union("algorithm", config_union())


def refresh_task_schema() -> None:
    """Rebuild the scenario model after a task was registered (`fedsim.register_task`)."""
    _replace_union("task", task_union())


def _load_plugins() -> None:
    """The policies, channel models, algorithms, tasks, aggregators and adapter kinds that installed distributions
    declare (entry point groups `fedsim.policies`, `.channels`, `.algorithms`, `.tasks`, `.aggregators`, `.adapters`):
    loaded in every process that reads a scenario, sweep workers, Ray actors and SuperNodes included. (Backbone
    families, `fedsim.backbones`, load when a model is first built: they need torch.)"""
    from channels.registry import load_entry_points as load_channels
    from fedsim.adapters import load_adapter_entry_points
    from fedsim.aggregators import load_aggregator_entry_points
    from fedsim.algorithms.registry import load_entry_points as load_algorithms
    from fedsim.tasks.registry import load_entry_points as load_tasks
    from policies.registry import load_entry_points as load_policies

    for load, refresh in (
        (load_policies, refresh_policy_schema),
        (load_channels, refresh_channel_schema),
        (load_algorithms, refresh_algorithm_schema),
        (load_tasks, refresh_task_schema),
    ):
        if load():
            refresh()
    load_aggregator_entry_points()  # checked by name when a scenario is read; no schema to refresh
    load_adapter_entry_points()


_register_union_tags()
_load_plugins()


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one `--set a.b=value`; the value is YAML, so `8`, `0.5`, `[1,2]`, `null` and `true` work."""
    if "=" not in text:
        raise FedsimError(f"--set {text!r}: expected FIELD=VALUE, for example --set adapter.max_rank=4")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise FedsimError(f"--set {text!r}: the field path is empty or has an empty part")
    try:
        value = load_yaml_text(raw) if raw != "" else ""
    except (yaml.YAMLError, ValueError, RecursionError):
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise FedsimError(f"--set {text!r}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader, except that a mapping repeating a key is an error (PyYAML keeps the last value silently)."""


def _construct_unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    first_line: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden by explicit keys
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = key in first_line
        except TypeError:
            raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark) from None
        if seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r} (first at line {first_line[key] + 1})", key_node.start_mark,
            )  # fmt: skip
        first_line[key] = key_node.start_mark.line
    return yaml.constructor.SafeConstructor.construct_mapping(loader, node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml_text(text: str) -> Any:
    """yaml.safe_load that refuses duplicate keys."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_problem(exc: yaml.YAMLError) -> tuple[str, str]:
    """(what PyYAML found wrong, " at line L, column C" or ""), for one-line messages about a YAML file."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return getattr(exc, "problem", None) or (str(exc).splitlines() or ["could not parse"])[0], where


def read_yaml_mapping(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise FedsimError(f"{path}: is a directory; expected a YAML file")
    if not path.is_file():
        raise FedsimError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FedsimError(
            f"{path}: not a text file (byte 0x{exc.object[exc.start]:02x} at offset {exc.start} is not UTF-8); expected a YAML scenario"
        ) from None
    except OSError as exc:
        raise FedsimError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        raw = load_yaml_text(text)
    except yaml.YAMLError as exc:
        problem, where = yaml_problem(exc)
        raise FedsimError(f"{path}: invalid YAML{where}: {problem}") from None
    except (ValueError, OverflowError) as exc:  # e.g. a date-like value that is no date (2024-13-45)
        raise FedsimError(f"{path}: invalid YAML: {(str(exc).splitlines() or ['could not parse'])[0]}") from None
    except RecursionError:
        raise FedsimError(f"{path}: invalid YAML: nested too deeply") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise FedsimError(f"{path}: expected a mapping of fields at the top level, found {type(raw).__name__}")
    return raw


def scenario_from_dict(raw: dict, source: str = "scenario", overrides: list[str] | None = None) -> Scenario:
    """The scenario `raw` describes; a problem is one FedsimError naming `source`, or the `--set` among `overrides`
    that wrote the field at fault."""
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as exc:
        raise FedsimError(_describe_validation_error(exc, _override_at(exc, overrides) or source)) from None
    problem = boolean_for_number(raw, scenario)
    if problem:
        raise FedsimError(f"{source}: {problem}")
    return scenario


def _refuse_a_preset_the_file_overrides(path, raw: dict, overrides: list[str]) -> None:
    """`--set channel.preset=P` keeps the file's channel fields, and fields written beside a preset win over it: a
    file that sets the preset's own fields (kind, snr_db, ...) would run a hybrid labelled P. One line instead."""
    from channels.presets import PRESETS

    section = raw.get("channel") if isinstance(raw.get("channel"), dict) else {}
    for text in overrides:
        keys, value = parse_override(text)
        if keys == ["channel", "preset"] and isinstance(value, str) and value in PRESETS:
            kept = sorted(k for k in section if k != "preset" and k in PRESETS[value])
            if kept:
                raise FedsimError(
                    f"{path}: --set {text} keeps the scenario's channel fields, and its {', '.join(kept)} would win over those of "
                    f"preset '{value}'; replace the whole section instead: --set 'channel={{preset: {value}}}' (add fields beside it to override)"
                )


def _override_at(exc: ValidationError, overrides: list[str] | None) -> str | None:
    """'--set TEXT' for the last override whose path leads to (or into) the error's location: it wrote the field at fault."""
    loc = [str(p) for p in exc.errors()[0]["loc"] if not (isinstance(p, str) and p in _UNION_TAGS)]
    for text in reversed(overrides or []):
        keys, _ = parse_override(text)
        if keys == loc[: len(keys)] or loc == keys[: len(loc)]:
            return f"--set {text}"
    return None


# Sections chosen by their `name` (tagged unions): switching the name alone keeps fields the new kind lacks.
_NAMED_SECTIONS = ("policy", "algorithm")


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    raw = read_yaml_mapping(path)
    _refuse_a_preset_the_file_overrides(path, raw, overrides or [])
    raw = apply_overrides(raw, overrides or [])
    try:
        return scenario_from_dict(raw, str(path), overrides)
    except FedsimError as exc:
        for text in overrides or []:
            keys, value = parse_override(text)
            if len(keys) == 2 and keys[0] in _NAMED_SECTIONS and keys[1] == "name" and f"unknown key '{keys[0]}." in str(exc):
                unknown = str(exc).split(f"unknown key '{keys[0]}.", 1)[1].split("'", 1)[0]
                raise FedsimError(
                    f"{path}: --set {text} keeps the rest of the scenario's {keys[0]} section, and '{unknown}' is not a field of "
                    f"{keys[0]} '{value}'; replace the whole section instead: --set '{keys[0]}={{name: {value}}}'"
                ) from None
        raise
