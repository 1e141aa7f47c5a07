"""The Python API, for notebooks and scripts: what `fedsim run` and `fedsim sweep` do, with the
ledgers handed back as pandas DataFrames.

    import fedsim
    result = fedsim.run("scenarios/quickstart.yaml", {"rounds": 5, "engine": "inline"})
    result.rounds[["round", "accuracy", "cum_bytes_up"]]
    sweep = fedsim.sweep("scenarios/snr_sweep.yaml", workers=2)
    sweep.results.groupby("channel.snr_db").accuracy.max()

`scenario` is a YAML path, a dict of fields or a Scenario; `overrides` a dict {field: value} (numpy
scalars are fine) or a list of "FIELD=VALUE" strings. Errors, arguments of another type included, are
`fedsim.FedsimError` (one line, as the CLI prints them); nothing is printed.
"""

from __future__ import annotations

import json
import numbers
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.types import FedsimError

if TYPE_CHECKING:
    import pandas as pd

    from fedsim.config import Scenario


@dataclass
class RunResult:
    """One finished run directory: the resolved scenario, the summary and both ledgers."""

    path: Path
    scenario: Scenario
    summary: dict
    rounds: pd.DataFrame  # rounds.csv: one row per round
    clients: pd.DataFrame  # clients.csv: one row per selected client per round


@dataclass
class SweepResult:
    path: Path
    counts: dict  # total, done, ran, skipped, failed
    results: pd.DataFrame  # results.csv: one row per run per round, the varying fields as columns


ALLOWED_SCENARIO = "a YAML path (str or pathlib.Path), a dict of scenario fields, or a fedsim Scenario"
ALLOWED_OVERRIDES = "a dict {field: value} (values: str, int, float, bool, None, numpy scalars, lists and dicts of them) or a list of 'FIELD=VALUE' strings"


def _plain(value: Any) -> Any:
    """json.dumps' fallback: numpy scalars and arrays (what notebooks hand over) as Python values."""
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy scalar or array, without importing numpy here
        return value.tolist()
    raise TypeError(f"a {type(value).__name__}")


def _overrides(overrides: dict[str, Any] | list[str] | None) -> list[str]:
    """{"channel.snr_db": 0, "policy": {"name": "fixed", "rank": 2}} -> --set strings (JSON is YAML)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        sets = []
        for key, value in overrides.items():
            if not isinstance(key, str) or not key:
                raise FedsimError(f"overrides: key {key!r} is a {type(key).__name__}; allowed: a field name such as 'channel.snr_db'")
            try:
                sets.append(f"{key}={json.dumps(value, default=_plain)}")
            except (TypeError, ValueError) as exc:  # an object JSON cannot hold, a non-string dict key, a cycle
                raise FedsimError(f"overrides[{key!r}]: cannot be a scenario value ({exc}); allowed: {ALLOWED_OVERRIDES}") from None
        return sets
    if isinstance(overrides, (list, tuple)):
        for item in overrides:
            if not isinstance(item, str):
                raise FedsimError(f"overrides: {item!r} is a {type(item).__name__}, not a 'FIELD=VALUE' string; allowed: {ALLOWED_OVERRIDES}")
        return list(overrides)
    raise FedsimError(f"overrides: got a {type(overrides).__name__}; allowed: {ALLOWED_OVERRIDES}")


def _path(value: Any, what: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise FedsimError(f"{what}: got a {type(value).__name__}; allowed: a path (str or pathlib.Path)")
    return Path(value)


def scenario_of(scenario: str | Path | dict | Scenario, overrides: dict[str, Any] | list[str] | None = None) -> Scenario:
    """A Scenario from a YAML path, a mapping, or a Scenario, with `overrides` applied as `--set` does.

    `overrides`: a dict {"channel.snr_db": 0, ...} whose values are YAML-able (numpy scalars and arrays are
    converted), or a list of "FIELD=VALUE" strings. Anything else is a FedsimError saying what is allowed.
    """
    from fedsim.config import Scenario, apply_overrides, load_scenario, scenario_from_dict

    if isinstance(scenario, (str, os.PathLike)):
        return load_scenario(scenario, _overrides(overrides))
    if isinstance(scenario, Scenario):
        raw = scenario.model_dump(mode="json")
    elif isinstance(scenario, Mapping):
        raw = dict(scenario)
    else:
        raise FedsimError(f"scenario: got a {type(scenario).__name__}; allowed: {ALLOWED_SCENARIO}")
    return scenario_from_dict(apply_overrides(raw, _overrides(overrides)), "scenario")


def run(
    scenario: str | Path | dict | Scenario,
    overrides: dict[str, Any] | list[str] | None = None,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> RunResult:
    """Run one scenario into `out` (default runs/<name>-<time>, suffixed when taken) and load its results."""
    from fedsim.runner import execute_run, start_run

    resolved = scenario_of(scenario, overrides)
    path = _path(out, "out") if out else Path("runs") / f"{resolved.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    claim = start_run(resolved, path, overwrite=overwrite, unique=out is None)
    execute_run(resolved, claim, progress=progress)
    return load_run(claim.path)


def load_run(path: str | Path) -> RunResult:
    """A finished run directory as a RunResult (an unfinished one is a FedsimError)."""
    import pandas as pd

    from fedsim.collect import read_finished_run
    from fedsim.config import load_scenario
    from fedsim.ledger import SUMMARY, is_finished

    path = _path(path, "path")
    if not is_finished(path):
        raise FedsimError(f"{path}: not a finished run (no {SUMMARY})")
    finished = read_finished_run(path)  # a corrupt summary.json, config.yaml or rounds.csv is one FedsimError line
    return RunResult(
        path=path,
        scenario=load_scenario(path / "config.yaml"),
        summary=finished.summary,
        rounds=pd.read_csv(path / "rounds.csv"),
        clients=pd.read_csv(path / "clients.csv", keep_default_na=False, na_values=[""]),
    )


def sweep(
    sweep_file: str | Path,
    out: str | Path | None = None,
    *,
    workers: int = 1,
    engine: str | None = None,
    progress: bool = False,
    ray_address: str | None = None,
) -> SweepResult:
    """Run (or resume) every point of a sweep file, then collect them, as `fedsim sweep` and `fedsim collect` do
    (`ray_address`: on that Ray cluster, as `fedsim sweep --ray-address`)."""
    import pandas as pd

    from fedsim.collect import write_results
    from fedsim.sweeps import default_out_dir, load_sweep, run_sweep

    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise FedsimError(f"workers={workers!r}: allowed: a whole number, at least 1")
    workers = int(workers)
    spec = load_sweep(_path(sweep_file, "sweep_file"), engine=engine, workers=workers)
    path = _path(out, "out") if out else default_out_dir(sweep_file)
    counts = run_sweep(spec, path, workers=workers, progress=progress, ray_address=ray_address)
    csv_path, _, _, _ = write_results(path)
    return SweepResult(path=path, counts=counts, results=pd.read_csv(csv_path))
