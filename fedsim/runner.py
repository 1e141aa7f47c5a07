"""Run one scenario to a run directory, on Flower's simulation engine or the inline engine."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from flwr.serverapp import Grid

from fedsim.config import Scenario
from fedsim.ledger import RunClaim, check_out_path, claim_run_dir, is_finished
from fedsim.quiet import quiet_frameworks, silence_frameworks
from fedsim.types import FedsimError


class RunInterrupted(Exception):
    """Raised in the ServerApp's thread once the user interrupted the run (Ctrl-C), so that it stops."""


def gpu_wanted(device: str) -> bool:
    """Whether a scenario's `device` asks for a GPU (cuda, or auto where torch sees one)."""
    if device == "cpu":
        return False
    import torch

    return device == "cuda" or torch.cuda.is_available()


def preflight(scenario: Scenario) -> None:
    """Everything a run checks before it claims a directory or builds a model (`fedsim validate` runs it too):
    the backbone exists and fits data.max_length / adapter.max_rank, the data files parse and split, the availability trace
    covers every round, the policy checkpoint loads, a Ray cluster named by ray_address answers."""
    from fedsim.backbone_check import check_backbone_fits, validate_backbone
    from fedsim.data import partition, split_validation
    from fedsim.tasks import build_task
    from policies import build_policy

    if scenario.engine != "inline":
        from fedsim.plugins import refuse_other_processes

        refuse_other_processes(scenario, f"engine={scenario.engine} (its clients run in Ray's processes)", "engine=inline")
    if scenario.ray_address is not None:
        from fedsim.procs import check_ray_address

        check_ray_address(scenario.ray_address, "ray_address")
    validate_backbone(scenario.model.backbone)
    if scenario.device == "cuda":
        from fedsim.runtime import resolve_device

        resolve_device(scenario.device)  # no visible GPU: one line now, not once the engine has started
    n_layers = check_backbone_fits(scenario)
    # What building a runtime checks of the data, without a tokenizer or a model: the files parse, the split fits.
    corpus = build_task(scenario.task).load(scenario.data)
    _, kept = split_validation(len(corpus.train.labels), scenario.data.validation_samples, scenario.seed)
    partition(corpus.train.labels[kept], scenario.clients.num_clients, scenario.data.partition, scenario.seed)
    if scenario.clients.availability_trace:
        from fedsim.availability import load_trace

        load_trace(scenario.clients.availability_trace, scenario.clients.num_clients, scenario.rounds)
    policy = build_policy(scenario.policy)  # a bad checkpoint is a one-line error before any engine starts
    if n_layers is not None:
        check_policy_layers(policy, n_layers)


def check_policy_layers(policy, n_layers: int) -> None:
    """A per-layer `ranks:` list, or a checkpoint trained for another adapter, fits the scenario's adapted layers."""
    per_layer = getattr(policy.config, "ranks", None)
    if per_layer is not None and len(per_layer) != n_layers:
        raise FedsimError(
            f"policy.ranks has {len(per_layer)} entries, but the adapter has {n_layers} adapted layers; allowed: a list of {n_layers} ranks, or policy.rank"
        )
    trained_for = getattr(policy, "n_layers", None)
    if getattr(policy.config, "checkpoint", None) and trained_for is not None and trained_for != n_layers:
        raise FedsimError(
            f"policy.checkpoint={policy.config.checkpoint}: trained for {trained_for} adapted layers, the scenario's adapter has "
            f"{n_layers}; allowed: a checkpoint trained for this adapter (fedsim train-policy)"
        )


def start_run(scenario: Scenario, out_dir: str | Path, overwrite: bool = False, unique: bool = False) -> RunClaim:
    """Check the scenario (`preflight`) and claim its run directory; nothing is written yet.

    `unique`: `out_dir` is a default name, suffixed -2, -3, ... when taken; `overwrite`: an existing
    directory is moved aside and deleted first. Every refusal is a FedsimError, before anything is built.
    """
    check_out_path(out_dir, overwrite=overwrite, unique=unique)
    preflight(scenario)
    return claim_run_dir(out_dir, overwrite=overwrite, unique=unique)


def execute_run(scenario: Scenario, claim: RunClaim, progress: bool = True) -> dict:
    """Run `scenario` into the claimed directory and release it; returns the summary."""
    quiet_frameworks()
    try:
        if scenario.engine == "inline":
            from fedsim.client_app import app as client_app
            from fedsim.inline_grid import InlineGrid
            from fedsim.server_app import run_server

            grid = InlineGrid(client_app, scenario.clients.num_clients)
            return run_server(grid, scenario, claim.path, progress, simulated=True)
        return _run_flower_simulation(scenario, claim.path, progress)
    finally:
        claim.release()


def run_scenario(scenario: Scenario, out_dir: str | Path, progress: bool = True, overwrite: bool = False, unique: bool = False) -> dict:
    """Run `scenario` into `out_dir`; returns the summary. The directory is finished only when summary.json exists."""
    return execute_run(scenario, start_run(scenario, out_dir, overwrite=overwrite, unique=unique), progress)


class _CancellableGrid(Grid):
    """The simulation's grid, except that every call raises RunInterrupted once `cancel` is set.

    Flower runs the ServerApp in a non-daemon thread that Ctrl-C does not reach: without this it
    would keep waiting for replies from a stopped engine, and the interpreter for it, forever.
    """

    def __init__(self, grid: Grid, cancel: threading.Event):
        self._grid = grid
        self._cancel = cancel

    def _check(self) -> None:
        if self._cancel.is_set():
            raise RunInterrupted("interrupted")

    def set_run(self, run_id) -> None:
        self._grid.set_run(run_id)

    @property
    def run(self):
        return self._grid.run

    def create_message(self, *args, **kwargs):
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self):
        self._check()
        return self._grid.get_node_ids()

    def push_messages(self, messages):
        self._check()
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids):
        self._check()
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        self._check()
        return self._grid.send_and_receive(messages, timeout=timeout)


def _run_flower_simulation(scenario: Scenario, out_dir: Path, progress: bool) -> dict:
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from fedsim.client_app import app as client_app
    from fedsim.client_errors import GuardedClientApp
    from fedsim.procs import start_reaper
    from fedsim.server_app import run_server

    result: dict = {}
    cancel = threading.Event()
    server_threads: list[threading.Thread] = []
    server = ServerApp()

    @server.main()
    def main(grid, context) -> None:
        server_threads.append(threading.current_thread())
        result.update(run_server(_CancellableGrid(grid, cancel), scenario, out_dir, progress, simulated=True))

    cores = os.cpu_count() or 1
    threads = scenario.threads or cores
    gpus = 1.0 if gpu_wanted(scenario.device) else 0.0
    backend_config = {
        # One actor using every core (and the GPU, with device: cuda): local training is serial per client
        # anyway (or one cohort call per round), the base model then sits in GPU memory once, and the same
        # thread count as the inline engine keeps the ledgers identical.
        "client_resources": {"num_cpus": min(threads, cores), "num_gpus": gpus},
        # address "local": a Ray of our own even when a cluster runs on this machine (`ray start`), which a bare
        # ray.init() would join, and then refuse our num_cpus.
        "init_args": {
            "address": "local",
            "logging_level": logging.ERROR,
            "log_to_driver": False,
            "include_dashboard": False,
            "num_cpus": cores,
            "num_gpus": int(gpus),
        },
    }
    if scenario.ray_address is not None:
        # An existing cluster (checked reachable by `preflight`): its nodes' CPUs are theirs to declare; the actor asks for the scenario's threads.
        backend_config = {
            "client_resources": {"num_cpus": scenario.threads or 1, "num_gpus": gpus},
            "init_args": {"address": scenario.ray_address, "logging_level": logging.ERROR, "log_to_driver": False},
        }

    def interrupted(signum, frame):
        # Before Flower's clean-up runs: its threads would log every actor that Ray loses on the way
        # down as an ERROR with a traceback, and the ServerApp thread would wait for replies forever.
        cancel.set()
        silence_frameworks()
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, interrupted) if in_main else None
    start_reaper()  # Ray's agents do not die with us by themselves (fedsim.procs)
    try:
        run_simulation(
            server_app=server,
            client_app=GuardedClientApp(client_app),
            num_supernodes=scenario.clients.num_clients,
            backend_config=backend_config,
        )
    except BaseException:
        # Ctrl-C (or a crash) in the engine: stop the ServerApp thread, and Ray if Flower had no time to.
        cancel.set()
        silence_frameworks()
        for thread in server_threads:
            thread.join(timeout=5.0)
        _shutdown_ray()
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
    if not is_finished(out_dir):
        raise RuntimeError(f"the Flower simulation ended without finishing {out_dir}; see the log above")
    return result


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass
