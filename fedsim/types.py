"""Small shared types: the only part of fedsim that `channels` and `policies` import.

Keeping these plain dataclasses of numpy arrays means channels and policies never
see torch, Flower or each other.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


def add_named(registry: dict, config_cls: type, target, kind: str, key: str = "name", base: type | None = None) -> str:
    """Register (config_cls, target) under the config's `key` field (a one-value Literal with that default); returns
    the name. The shared part of `fedsim.register_policy`, `register_algorithm`, `register_task` and `register_channel`
    (key `model`). Everything is checked before the registry changes: a refused registration leaves it as it was (a
    config the scenario's discriminated union cannot take would otherwise break every later scenario read).
    `base`: the class `target` must subclass (a built-in's "module:Class" string, imported on first use, is not checked)."""
    from typing import Literal, get_args, get_origin

    fields = getattr(config_cls, "model_fields", None)
    if not isinstance(config_cls, type) or not isinstance(fields, dict):
        raise TypeError(f"{config_cls!r}: a {kind} config must be a pydantic model class")
    field = fields.get(key)
    name = getattr(field, "default", None)
    annotation = getattr(field, "annotation", None)
    if not isinstance(name, str) or not name or get_origin(annotation) is not Literal or get_args(annotation) != (name,):
        raise TypeError(f"{config_cls.__name__}: a {kind} config needs a `{key}: Literal['<name>'] = '<name>'` field (one value, and it as the default)")
    if base is not None and not isinstance(target, str) and not (isinstance(target, type) and issubclass(target, base)):
        raise TypeError(f"{getattr(target, '__name__', repr(target))}: a {kind} must be a subclass of {base.__module__}.{base.__qualname__}")
    if name in registry and registry[name] != (config_cls, target):
        raise ValueError(f"a {kind} named {name!r} is already registered")
    registry[name] = (config_cls, target)
    return name


def load_entry_points(group: str, register: Callable[[str, object], str], kind: str) -> list[str]:
    """Register what installed distributions declare under the entry point `group`: `register(entry name, the loaded
    object)` returns the registered name; returns them all.

    One that cannot be loaded or registered (its module missing or raising, the wrong kind of object, a name already
    taken) is skipped with one line on stderr: a broken plugin must not take every fedsim command down with it; a
    scenario naming it then fails as for any unknown name."""
    from importlib.metadata import entry_points

    names = []
    for entry in entry_points(group=group):
        try:
            names.append(register(entry.name, entry.load()))
        except Exception as exc:  # noqa: BLE001 - any failure of third-party code: reported, not fatal
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            dist = getattr(entry.dist, "name", "?")
            print(f"fedsim: skipped {kind} plugin {entry.name} = {entry.value} (from {dist}): {why}", file=sys.stderr)
    return names


def load_entry_point_pairs(group: str, add: Callable[[type, type], str], kind: str) -> list[str]:
    """`load_entry_points` for the kinds an entry names as a (config class, class) pair, registered with `add` (a
    registry's add_*) under the config's own name."""

    def register(_entry_name: str, pair) -> str:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise TypeError(f"not a (config class, {kind} class) pair but {type(pair).__name__}")
        return add(*pair)

    return load_entry_points(group, register, kind)


ERROR_LINE_PREFIX = "[fedsim] error: "  # how a deployed ServerApp reports a FedsimError in its log stream (fedsim.deploy reads it)


class FedsimError(Exception):
    """Bad user input (config, data, checkpoint, CLI). The CLI prints it as one line and exits 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `kill`, `timeout`, SLURM and `docker stop` send), handled as Ctrl-C is: the same cleanup (worker
    processes, Ray, a run's lock) and one line, with the shell's exit code for it, 128 + 15."""


def run_script(main: Callable[[], int], name: str) -> None:
    """Exit with a script's `main()` status; a FedsimError becomes one line on stderr and exit 2, as in `fedsim`."""
    try:
        sys.exit(main())
    except FedsimError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(2)


@dataclass
class ChannelStates:
    """One round's uplink state of the selected clients, one entry per client (aligned arrays)."""

    client_ids: np.ndarray  # int, shape [n]
    snr_db: np.ndarray  # large-scale SNR in dB (path loss, shadowing, configured value)
    fading_gain: np.ndarray  # |h|^2, 1.0 for AWGN
    bandwidth_hz: np.ndarray  # this client's share of the uplink band
    rate_bps: np.ndarray  # achievable rate at this round's fading (the capacity)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # model-specific columns for the ledger
    send_rate_bps: np.ndarray | None = None  # the rate uploads go at, when not the capacity (a fixed target rate)
    slot: np.ndarray | None = None  # int: each client's place in the round's sequential (TDMA) slots, lowest first; None: in parallel

    def __len__(self) -> int:
        return len(self.client_ids)

    @property
    def upload_rate_bps(self) -> np.ndarray:
        """The rate an upload is sent at, so its airtime is bits / this: the capacity under rate adaptation."""
        return self.rate_bps if self.send_rate_bps is None else self.send_rate_bps

    def subset(self, index: np.ndarray) -> ChannelStates:
        return ChannelStates(
            client_ids=self.client_ids[index],
            snr_db=self.snr_db[index],
            fading_gain=self.fading_gain[index],
            bandwidth_hz=self.bandwidth_hz[index],
            rate_bps=self.rate_bps[index],
            extra={k: v[index] for k, v in self.extra.items()},
            send_rate_bps=None if self.send_rate_bps is None else self.send_rate_bps[index],
            slot=None if self.slot is None else self.slot[index],  # places keep their order; only their ranks matter
        )


@dataclass
class Transmission:
    """What one upload (or download) cost and whether it arrived."""

    n_bits: int  # bits put on the air: 0 for an upload the deadline stopped before it began, which is charged nothing
    latency_s: float
    energy_j: float
    delivered: bool
    drop_reason: str = ""  # "" when delivered; e.g. "outage", "packet-error", "deadline"
    packets: int = 1
    retransmissions: int = 0
    compute_s: float = 0.0  # local computation before the upload (0 unless the channel models it)
    compute_energy_j: float = 0.0  # included in energy_j
    start_s: float | None = None  # when the upload began, from the round's start (None: right after compute_s)


@dataclass
class Observation:
    """What a rank policy sees before a round: channel, training signals and the adapter layout."""

    round: int  # 1-based
    total_rounds: int
    channel: ChannelStates  # the selected clients, in the order ranks must be returned
    layer_names: list[str]
    max_rank: int
    params_per_rank: np.ndarray  # int [layers]: parameters one rank component of each layer costs (A row + B column)
    fixed_params: int  # parameters sent regardless of ranks (the classification head)
    bits_per_param: int
    last_ranks: np.ndarray  # int [clients, layers]; the ranks each client had last time, or max_rank
    last_loss: float  # global evaluation loss after the previous round (nan before round 1)
    last_accuracy: float
    layer_importance: np.ndarray  # float [layers], >= 0: the global adapter's singular-value mass, or the clients' sensitivity
    importance_round: int | None = None  # the last round whose delivered updates measured it (0: none yet; None: every round)
    data_stats: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [clients, 2]: token entropy, OOV rate
    deadline_s: float = float("inf")  # the round's upload deadline, if any
    upload_tensors: int = 0  # tensors of a full-rank upload, each with a scale when quantised (0: A and B per layer + the head's two)
    compute_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float [clients]: local training before the upload (empty: none)
    sequential_uploads: bool = False  # uploads one after another in the order channel.slot gives (TDMA), not in parallel
    over_the_air: bool = False  # AirComp: the round's updates share one analog slot (`channels.aircomp`)

    @property
    def n_clients(self) -> int:
        return len(self.channel)

    @property
    def n_layers(self) -> int:
        return len(self.layer_names)
