"""Run one scenario to a run directory, on Flower's simulation engine or the inline engine."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from fedsim.config import Scenario
from fedsim.ledger import is_finished
from fedsim.types import FedsimError


def quiet_frameworks() -> None:
    """Keep Flower's, Ray's and HF's log noise away from the user; errors still show."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    os.environ.setdefault("RAY_LOG_TO_STDERR", "0")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("flwr", "ray", "peft", "transformers"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        # Flower resets its logger's level when a simulation starts; a filter survives that.
        if not any(isinstance(f, _ErrorsOnly) for f in logger.filters):
            logger.addFilter(_ErrorsOnly())


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def run_scenario(scenario: Scenario, out_dir: str | Path, progress: bool = True, overwrite: bool = False) -> dict:
    """Run `scenario` into `out_dir`; returns the summary. The directory is finished only when summary.json exists."""
    from fedsim.model import validate_backbone
    from policies import build_policy

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        state = "a finished run" if is_finished(out_dir) else "files"
        raise FedsimError(f"--out {out_dir}: already holds {state}; choose another directory or pass --overwrite")
    validate_backbone(scenario.model.backbone)
    build_policy(scenario.policy)  # a bad checkpoint is a one-line error before any engine starts
    quiet_frameworks()
    if scenario.engine == "inline":
        from fedsim.client_app import app as client_app
        from fedsim.inline_grid import InlineGrid
        from fedsim.server_app import run_server

        return run_server(InlineGrid(client_app, scenario.clients.num_clients), scenario, out_dir, progress)
    return _run_flower_simulation(scenario, out_dir, progress)


def _run_flower_simulation(scenario: Scenario, out_dir: Path, progress: bool) -> dict:
    from flwr.simulation import run_simulation

    from fedsim.client_app import app as client_app
    from fedsim.server_app import make_server_app

    result: dict = {}
    cores = os.cpu_count() or 1
    threads = scenario.threads or cores
    backend_config = {
        # One actor using every core: local training is serial per client anyway, and
        # the same thread count as the inline engine keeps the ledgers identical.
        "client_resources": {"num_cpus": min(threads, cores), "num_gpus": 0.0},
        "init_args": {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False, "num_cpus": cores},
    }
    run_simulation(
        server_app=make_server_app(scenario, out_dir, progress, result),
        client_app=client_app,
        num_supernodes=scenario.clients.num_clients,
        backend_config=backend_config,
    )
    if not is_finished(out_dir):
        raise RuntimeError(f"the Flower simulation ended without finishing {out_dir}; see the log above")
    return result
