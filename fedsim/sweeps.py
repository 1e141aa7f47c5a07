"""Sweeps: a grid of scenarios, one run directory per grid point, parallel and resumable.

A sweep file is YAML::

    base: quickstart.yaml            # scenario path, relative to the sweep file
    engine: inline                   # default; `flower` runs every point on Flower's simulation engine
    set:                             # optional fixed overrides applied to every point
      rounds: 10
    grid:                            # dotted scenario field -> list of values (Cartesian product)
      channel.snr_db: [-5, 0, 10, 20]
      policy.name: [fixed]
    zip:                             # optional: fields that vary *together* (one axis, equal lengths);
      data.partition.alpha: [0.1, 100]   # a list of such mappings gives several zipped axes
      name: [noniid, iid]
    seeds: [0, 1, 2]

The points are grid x zip x seeds. Each point is the base scenario with
`set`, then the point's values applied, validated as a whole before any run
starts. Its run directory is ``<labels>-<hash10>``: readable labels of the
varying values, and the first 10 hex digits of the SHA-256 of the resolved
scenario (canonical JSON, without the execution-only fields ``threads`` and
``engine``, which by the ledger invariant do not change results). The same
point therefore maps to the same directory in any process, on any day.

Resuming is by directory state alone: ``summary.json`` present = done (skipped);
a directory without it = unfinished (deleted and redone from scratch); no
directory = pending. Failures are recorded in ``failed.json`` and retried by the
next invocation.
"""

from __future__ import annotations

import concurrent.futures as futures
import difflib
import fcntl
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
import traceback
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fedsim.config import Scenario, read_yaml_mapping, scenario_from_dict
from fedsim.ledger import SUMMARY, atomic_write_text, drop_later_defaults, is_finished
from fedsim.provenance import code_label, fedsim_commit
from fedsim.types import FedsimError

# Fields that choose *how* a run executes, not *what* it computes; left out of the directory hash.
EXECUTION_FIELDS = ("threads", "engine", "ray_address")
SWEEP_KEYS = {"base", "grid", "zip", "seeds", "set", "engine"}
MANIFEST = "sweep.json"
FAILED = "failed.json"
LOCK = ".sweep.lock"


# ----------------------------------------------------------------------------- field paths


def _models_in(annotation) -> list[type[BaseModel]]:
    """Every pydantic model class reachable in a type annotation (through Optional, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def scenario_field_paths() -> list[str]:
    """All dotted field paths a scenario may hold (for channel/policy: any registered kind's fields)."""
    paths: list[str] = []

    def walk(models: list[type[BaseModel]], prefix: str) -> None:
        seen: set[str] = set()
        for model in models:
            for name, info in model.model_fields.items():
                if name in seen:
                    continue
                seen.add(name)
                path = f"{prefix}{name}"
                paths.append(path)
                walk(_models_in(info.annotation), path + ".")

    walk([Scenario], "")
    return paths


def check_field_path(path: str, source: str) -> None:
    known = scenario_field_paths()
    if path in known:
        return
    close = difflib.get_close_matches(path, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "; see `fedsim validate SCENARIO` for the fields"
    raise FedsimError(f"{source}: '{path}' is not a scenario field{hint}")


# ----------------------------------------------------------------------------- the sweep file


@dataclass
class GridPoint:
    """One run of the sweep: its varying values, its resolved scenario and its directory name."""

    values: dict[str, Any]  # varying field path -> value, in sweep-file order, `seed` last
    scenario: Scenario
    digest: str
    name: str

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items())

    @property
    def text(self) -> str:
        """The point as error messages name it: {channel.snr_db: 5, seed: 0}."""
        return point_text(self.values)


def point_text(values: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in values.items()) + "}"


@dataclass
class Sweep:
    path: Path
    base: Path
    engine: str
    fixed: dict[str, Any]
    grid: dict[str, list]
    zips: list[dict[str, list]]
    seeds: list[int]
    points: list[GridPoint] = field(default_factory=list)

    @property
    def fields(self) -> list[str]:
        """The varying fields, grid then zip, as they name result columns (seed excluded)."""
        names = list(self.grid)
        for group in self.zips:
            names.extend(k for k in group if k not in names)
        return names


def checkpoint_digest(directory: str) -> str | None:
    """SHA-256 (hex) of a policy checkpoint's files (policy.json, weights.safetensors), None when absent."""
    path = Path(directory)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.suffix in (".json", ".safetensors")):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def config_digest(scenario: Scenario) -> str:
    """SHA-256 (hex) of the scenario's canonical JSON, execution-only fields removed.

    A policy checkpoint counts by its content, not only its path: retraining into the same
    directory gives new run directories instead of silently reusing results of the old policy.
    """
    data = scenario.model_dump(mode="json")
    for key in EXECUTION_FIELDS:
        data.pop(key, None)
    drop_later_defaults(data)  # so that an existing sweep's run directories keep their names
    checkpoint = (data.get("policy") or {}).get("checkpoint")
    if checkpoint:
        data["policy"]["checkpoint_sha256"] = checkpoint_digest(checkpoint)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _short_names(paths: list[str]) -> dict[str, str]:
    """Last path component as the label, unless two fields share it (then the full path)."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return {p: (short if last.count(short) == 1 else p) for p, short in zip(paths, last)}


def _label_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return re.sub(r"[^A-Za-z0-9.+\-]+", "_", text).strip("_") or "_"


LONG_LABEL = 64  # a value whose label is longer (e.g. a list of 27 label names) is left out of the name; the hash keeps it apart


def run_dir_name(values: dict[str, Any], digest: str) -> str:
    short = _short_names(list(values))
    labels = "_".join(f"{short[k]}={label}" for k, v in values.items() if len(label := _label_value(v)) <= LONG_LABEL)
    return f"{labels[:120]}-{digest[:10]}"


def _value_list(raw: Any, where: str) -> list:
    if not isinstance(raw, list):
        raise FedsimError(f"{where}: expected a list of values, got {raw!r}")
    if not raw:
        raise FedsimError(f"{where}: empty list; give at least one value")
    return raw


def _mapping_of_lists(raw: Any, where: str) -> dict[str, list]:
    if not isinstance(raw, dict):
        raise FedsimError(f"{where}: expected a mapping of dotted field -> list of values")
    if not raw:
        raise FedsimError(f"{where}: empty mapping; give at least one field")
    out = {}
    for key, values in raw.items():
        key = str(key)
        check_field_path(key, f"{where}.{key}")
        out[key] = _value_list(values, f"{where}.{key}")
    return out


def load_sweep(path: str | Path, engine: str | None = None, workers: int = 1) -> Sweep:
    """Parse and validate a sweep file and every one of its grid points; raises FedsimError on the first problem."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    unknown = sorted(set(raw) - SWEEP_KEYS)
    if unknown:
        if "base" not in raw and set(unknown) <= set(Scenario.model_fields):
            raise FedsimError(f"{path}: unknown key '{unknown[0]}': this is a scenario, not a sweep file; run it with `fedsim run {path}`")
        raise FedsimError(f"{path}: unknown key '{unknown[0]}'; allowed: {', '.join(sorted(SWEEP_KEYS))}")
    if "base" not in raw or not isinstance(raw["base"], str):
        raise FedsimError(f"{path}: 'base' is missing; give the base scenario's path (relative to the sweep file)")
    base = (path.parent / raw["base"]).resolve() if not Path(raw["base"]).is_absolute() else Path(raw["base"])
    if not base.is_file():
        raise FedsimError(f"{path}: base: no such scenario file {raw['base']!r} (looked for {base})")

    sweep_engine = engine or raw.get("engine", "inline")
    if sweep_engine not in ("inline", "flower"):
        raise FedsimError(f"{path}: engine = {sweep_engine!r} is invalid; allowed: inline, flower")
    fixed = raw.get("set") or {}
    if not isinstance(fixed, dict):
        raise FedsimError(f"{path}: set: expected a mapping of dotted field -> value")
    for key in fixed:
        check_field_path(str(key), f"{path}: set.{key}")

    grid = _mapping_of_lists(raw["grid"], f"{path}: grid") if raw.get("grid") is not None else {}
    zip_raw = raw.get("zip")
    zip_groups = [] if zip_raw is None else (zip_raw if isinstance(zip_raw, list) else [zip_raw])
    zips = []
    for i, group in enumerate(zip_groups):
        where = f"{path}: zip" if not isinstance(zip_raw, list) else f"{path}: zip[{i}]"
        group = _mapping_of_lists(group, where)
        lengths = {k: len(v) for k, v in group.items()}
        if len(set(lengths.values())) > 1:
            raise FedsimError(f"{where}: zipped lists must have equal lengths, got {lengths}")
        zips.append(group)
    seen: set[str] = set()
    for key in list(grid) + [k for g in zips for k in g]:
        if key in seen:
            raise FedsimError(f"{path}: field '{key}' appears twice in grid/zip; give each field one axis")
        seen.add(key)
    if "seed" in seen:
        raise FedsimError(f"{path}: vary the seed with 'seeds:', not in grid/zip")

    seeds = _value_list(raw.get("seeds", [0]), f"{path}: seeds")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise FedsimError(f"{path}: seeds: expected a list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise FedsimError(f"{path}: seeds: {seeds!r} repeats a seed")

    sweep = Sweep(path, base, sweep_engine, fixed, grid, zips, seeds)
    sweep.points = expand(sweep, workers)
    return sweep


def _set_path(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def threads_per_run(workers: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def expand(sweep: Sweep, workers: int = 1) -> list[GridPoint]:
    """grid (Cartesian, in file order) x each zip axis x seeds; every point validated before any run starts."""
    base_raw = read_yaml_mapping(sweep.base)
    axes: list[list[dict[str, Any]]] = [[{key: v} for v in values] for key, values in sweep.grid.items()]
    for group in sweep.zips:
        n = len(next(iter(group.values())))
        axes.append([{key: values[i] for key, values in group.items()} for i in range(n)])
    axes.append([{"seed": s} for s in sweep.seeds])

    threads = threads_per_run(workers)
    points: list[GridPoint] = []
    by_name: dict[str, GridPoint] = {}
    for combo in itertools.product(*axes):
        values: dict[str, Any] = {}
        for part in combo:
            values.update(part)
        raw = json.loads(json.dumps(base_raw))  # deep copy of plain YAML data
        for key, value in sweep.fixed.items():
            _set_path(raw, str(key), value)
        for key, value in values.items():
            _set_path(raw, key, value)
        raw["engine"] = sweep.engine
        # Split the cores among the workers, never more than the scenario itself asks for.
        raw["threads"] = min(threads, raw["threads"]) if isinstance(raw.get("threads"), int) else threads
        scenario = scenario_from_dict(raw, f"{sweep.path}: grid point {point_text(values)}")
        digest = config_digest(scenario)
        name = run_dir_name(values, digest)
        if name in by_name:
            raise FedsimError(
                f"{sweep.path}: grid points {by_name[name].label} and {', '.join(f'{k}={v}' for k, v in values.items())} "
                "resolve to the same scenario; remove the duplicate value"
            )
        point = GridPoint(values, scenario, digest, name)
        by_name[name] = point
        points.append(point)
    return points


def preflight_points(sweep: Sweep, points: list[GridPoint] | None = None) -> int:
    """What a run checks before it starts (`fedsim.runner.preflight`: backbone, data files, availability trace,
    policy checkpoint, ...) for every point (default: all of the sweep's), before any run starts; the first
    problem is a one-line FedsimError naming the point. Returns how many scenarios were checked.

    Points that differ only in `seed` are checked once: what preflight checks does not depend on the seed (the
    seeded validation split and partition can only fail on sizes), and a point loads its policy checkpoint, which
    takes seconds for some policies (scenarios/policy_compare.yaml: 144 points, 24 checks). An unexpected error
    (not a FedsimError) is left to the run itself, which records it in failed.json as before.
    """
    from fedsim import runner

    seen: set[str] = set()
    for point in sweep.points if points is None else points:
        data = point.scenario.model_dump(mode="json")
        data.pop("seed", None)
        key = json.dumps(data, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            runner.preflight(point.scenario)
        except FedsimError as exc:
            raise FedsimError(f"{sweep.path}: grid point {point.text}: {exc}") from None
        except Exception:  # noqa: BLE001 - not an input error this check knows: the run reports it (failed.json)
            continue
    return len(seen)


# ----------------------------------------------------------------------------- state of a sweep directory


def check_sweep_dir(out_dir: str | Path, writable: bool = True, points: list[str] | None = None) -> None:
    """--out of a sweep: a directory (an existing sweep directory resumes) or a path where one can be made.
    A file in the way or (with `writable`) an unwritable parent, a run's directory, or a directory holding anything
    but a sweep.json or this sweep's own run directories (`points`) is a one-line FedsimError, before anything is
    made or run."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FedsimError(f"--out {out_dir}: is a file, not a directory; allowed: a new directory, or the directory of this sweep to resume it")
    anchor = out_dir
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        raise FedsimError(f"--out {out_dir}: {anchor} is a file, not a directory; allowed: a path whose parents are directories")
    if writable and not os.access(anchor, os.W_OK | os.X_OK):
        raise FedsimError(f"--out {out_dir}: {anchor} is not writable")
    if writable and out_dir.is_dir() and not (out_dir / MANIFEST).exists():
        # A sweep writes its runs and sweep.json beside what is there, and collect/plot read only the runs sweep.json
        # lists: another run's or sweep's results in it would be hidden, or look like this sweep's.
        allowed = "allowed: a new or empty directory, or the directory of a sweep to resume or extend it"
        if (out_dir / SUMMARY).exists() or (out_dir / "rounds.csv").exists():
            raise FedsimError(f"--out {out_dir}: is a run's directory (it holds {SUMMARY} or rounds.csv), not a sweep's; {allowed}")
        entries = sorted(p.name for p in out_dir.iterdir() if p.name not in {LOCK, FAILED, *(points or [])})
        if entries:
            raise FedsimError(f"--out {out_dir}: holds {len(entries)} entries (e.g. {entries[0]}) but no {MANIFEST}, so it is no sweep's directory; {allowed}")


def read_failed(out_dir: Path) -> dict[str, dict]:
    """failed.json's records; an unreadable or corrupt file counts as none (the sweep rewrites it)."""
    try:
        data = json.loads((out_dir / FAILED).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {name: record for name, record in data.items() if isinstance(record, dict)}


def point_states(sweep: Sweep, out_dir: Path) -> dict[str, str]:
    """run dir name -> 'done' | 'failed' | 'unfinished' | 'pending'."""
    failed = read_failed(out_dir)
    states = {}
    for point in sweep.points:
        run_dir = out_dir / point.name
        if is_finished(run_dir):
            states[point.name] = "done"
        elif point.name in failed:
            states[point.name] = "failed"
        elif run_dir.exists():
            states[point.name] = "unfinished"
        else:
            states[point.name] = "pending"
    return states


def made_by_other_code(sweep: Sweep, out_dir: Path) -> dict[str, str]:
    """Finished run dir name -> the fedsim commit that made it, for the runs that another commit than this process's
    made (summary.json's `environment`; 'an older fedsim' where it has none). Resuming skips finished runs by their
    scenario's hash, which leaves out the code, so a fix that moves a ledger leaves such runs as they were. Empty
    outside a git checkout."""
    commit, dirty = fedsim_commit()
    if commit is None:
        return {}
    here = code_label(commit, dirty)
    other = {}
    for point in sweep.points:
        try:
            environment = json.loads((out_dir / point.name / SUMMARY).read_text()).get("environment")
        except (OSError, ValueError, AttributeError):  # not finished, or unreadable: collect and plot say so
            continue
        if not isinstance(environment, dict):
            other[point.name] = "an older fedsim"
        elif (label := code_label(environment.get("fedsim_commit"), environment.get("fedsim_dirty"))) != here:
            other[point.name] = label
    return other


def other_code_note(other: dict[str, str]) -> str | None:
    if not other:
        return None
    commit, dirty = fedsim_commit()
    return (
        f"note: {len(other)} finished run{'s were' if len(other) > 1 else ' was'} made by another fedsim than this one ({code_label(commit, dirty)}) "
        "and kept: a change since may move their ledgers; delete a run's directory and re-run the sweep to redo it"
    )


def status_report(sweep: Sweep, out_dir: Path) -> str:
    states = point_states(sweep, out_dir)
    failed = read_failed(out_dir)
    other = made_by_other_code(sweep, out_dir)
    counts = {s: sum(1 for v in states.values() if v == s) for s in ("done", "unfinished", "failed", "pending")}
    lines = [f"sweep {sweep.path} -> {out_dir}: {len(states)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    for point in sweep.points:
        state = states[point.name]
        extra = f"  ({failed[point.name].get('error', 'no error recorded')})" if state == "failed" else ""
        extra += f"  (made by fedsim {other[point.name]})" if point.name in other else ""
        lines.append(f"  {state:<10} {point.name}{extra}")
    note = other_code_note(other)
    return "\n".join(lines + ([note] if note else []))


def write_manifest(sweep: Sweep, out_dir: Path) -> None:
    manifest = {
        "sweep_file": str(sweep.path),
        "base": str(sweep.base),
        "engine": sweep.engine,
        "fields": sweep.fields,
        "zip_groups": [list(group) for group in sweep.zips],
        "seeds": sweep.seeds,
        "points": [{"dir": p.name, "values": p.values, "hash": p.digest} for p in sweep.points],
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")


# ----------------------------------------------------------------------------- running


def _run_point(scenario_json: dict, run_dir: str) -> tuple[str, float, dict | None, str | None]:
    """Worker entry (a 'spawn' process that runs point after point, keeping its runtime, whose caches must not change
    a point's numbers): run one scenario; never raises, reports the error instead."""
    from fedsim.runner import run_scenario

    started = time.time()
    try:
        scenario = Scenario.model_validate(scenario_json)
        summary = run_scenario(scenario, run_dir, progress=False, overwrite=True)
        return run_dir, time.time() - started, summary, None
    except Exception as exc:  # noqa: BLE001 - a failing run must not take the sweep down
        tail = traceback.format_exc(limit=-3)
        return run_dir, time.time() - started, None, f"{type(exc).__name__}: {exc}\n{tail}"


class _SweepLock:
    """An flock on DIR/.sweep.lock: two sweeps writing one directory would redo each other's runs.

    The kernel drops the lock when the holder dies, so a SIGKILLed sweep never leaves it stale.
    """

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOCK
        self.handle = None

    def __enter__(self):
        try:
            self.handle = open(self.path, "w")
        except OSError as exc:
            raise FedsimError(f"--out {self.path.parent}: cannot create {LOCK} there ({exc.strerror or exc})") from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise FedsimError(f"{self.path.parent}: another `fedsim sweep` is running in this directory") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def run_sweep(sweep: Sweep, out_dir: str | Path, workers: int = 1, progress: bool = True, ray_address: str | None = None) -> dict[str, int]:
    """Run every point not yet done; returns counts {'done', 'ran', 'failed', 'skipped'}. With `ray_address`, the runs
    are Ray tasks on that cluster (`_run_on_ray`) instead of local processes; resuming works the same way.

    Before anything is made or run: the out directory is checked (`check_sweep_dir`) and every point still to run
    is pre-checked (`preflight_points`); bad input is a one-line FedsimError with nothing written."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    check_sweep_dir(out_dir, points=[p.name for p in sweep.points])
    if ray_address is not None or workers > 1:
        from fedsim.plugins import refuse_other_processes

        where = "a Ray cluster's tasks" if ray_address is not None else f"--workers {workers} (worker processes)"
        for point in sweep.points:
            refuse_other_processes(point.scenario, where, "--workers 1 without a Ray cluster, and engine=inline")
    preflight_points(sweep, [p for p in sweep.points if not is_finished(out_dir / p.name)])
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FedsimError(f"--out {out_dir}: cannot create the sweep directory ({exc.strerror or exc})") from None
    with _SweepLock(out_dir):
        before = _manifest_points(out_dir)
        write_manifest(sweep, out_dir)
        failed = read_failed(out_dir)
        todo = _unfinished_points(sweep, out_dir, failed)
        skipped = len(sweep.points) - len(todo)
        _write_failed(out_dir, failed)
        if todo or before != [p.name for p in sweep.points]:
            removed = remove_derived_outputs(out_dir)
            if removed:
                print(f"note: removed {', '.join(removed)}, made from this directory's earlier runs; `fedsim plot {out_dir}` makes them anew", flush=True)
        bar = tqdm(total=len(sweep.points), initial=skipped, desc="sweep", unit="run", disable=not progress, dynamic_ncols=True, smoothing=0.0)
        counts = {"ran": 0, "failed": 0}

        def record(point: GridPoint, result) -> None:
            _, wall, summary, error = result
            if error is None:
                counts["ran"] += 1
                failed.pop(point.name, None)
                msg = f"done  {point.name}  acc={summary['final_accuracy']:.3f}  {wall:.0f}s"
            else:
                counts["failed"] += 1
                failed[point.name] = {"values": point.values, "error": error.splitlines()[0], "traceback": error}
                msg = f"FAIL  {point.name}: {error.splitlines()[0]}"
            _write_failed(out_dir, failed)
            bar.update(1)
            bar.set_postfix(failed=counts["failed"])
            if progress:
                bar.write(msg)
            else:
                print(msg, flush=True)

        jobs = [(p, p.scenario.model_dump(mode="json"), str(out_dir.resolve() / p.name)) for p in todo]
        if ray_address is not None:
            _run_on_ray(jobs, ray_address, record)
        elif workers <= 1:
            for point, scenario_json, run_dir in jobs:
                record(point, _run_point(scenario_json, run_dir))
        else:
            _run_in_processes(jobs, workers, record)
        bar.close()
    ran = counts["ran"]
    return {"done": skipped + ran, "ran": ran, "skipped": skipped, "failed": counts["failed"], "total": len(sweep.points)}


def _manifest_points(out_dir: Path) -> list[str] | None:
    """The run directories an existing sweep.json lists (None: none, or unreadable)."""
    try:
        return [p["dir"] for p in json.loads((out_dir / MANIFEST).read_text())["points"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# What `fedsim collect` and `fedsim plot` (and benchmarks/policy_behaviour.py --plot) write into a sweep directory.
DERIVED_FILES = ("results.csv", "results.parquet")
FIGURE = re.compile(r"((accuracy|loss)_vs_\w+|rank_heatmap|accuracy_at_budget|rank_profile_.+)\.(png|svg)")


def remove_derived_outputs(out_dir: Path) -> list[str]:
    """Delete the results tables and the figures in plots/ that were made from the directory's runs before this sweep
    changed them (they would pass for this sweep's); other files are left. Returns what was removed, relative names."""
    removed = []
    for name in DERIVED_FILES:
        if (out_dir / name).is_file():
            (out_dir / name).unlink()
            removed.append(name)
    plots = out_dir / "plots"
    figures = sorted(p for p in plots.iterdir() if p.is_file() and FIGURE.fullmatch(p.name)) if plots.is_dir() else []
    for figure in figures:
        figure.unlink()
    if figures:
        removed.append(f"{len(figures)} figure{'s' if len(figures) > 1 else ''} in plots/")
        if not any(plots.iterdir()):
            plots.rmdir()
    return removed


def _unfinished_points(sweep: Sweep, out_dir: Path, failed: dict) -> list[GridPoint]:
    """The points still to run; removes what an unfinished run left behind, and forgets the failures of
    points that have since finished."""
    todo = []
    for point in sweep.points:
        run_dir = out_dir / point.name
        if is_finished(run_dir):
            failed.pop(point.name, None)
            continue
        if run_dir.exists():
            shutil.rmtree(run_dir)  # unfinished (killed or failed): redo from scratch
        todo.append(point)
    return todo


def _run_in_processes(jobs: list, workers: int, record) -> None:
    """Run `jobs` (point, scenario JSON, run directory) in `workers` spawned processes, calling
    `record(point, result)` as each ends; no worker outlives this call, Ctrl-C included."""
    from fedsim.procs import die_with_parent

    # Workers stopped by Ctrl-C leave their pool's semaphores behind; the resource tracker process
    # (which inherits -W options) would report that as a two-line warning after "interrupted".
    if "ignore:resource_tracker:UserWarning" not in sys.warnoptions:
        sys.warnoptions.append("ignore:resource_tracker:UserWarning")
    context = multiprocessing.get_context("spawn")
    # Workers die with this process (parent-death signal), even when it is SIGKILLed.
    pool = futures.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        pending = {pool.submit(_run_point, s, d): p for p, s, d in jobs}
        for future in futures.as_completed(pending):
            point = pending[future]
            try:
                result = future.result()
            except Exception as exc:  # a worker process died (e.g. out of memory)
                result = (None, 0.0, None, f"{type(exc).__name__}: {exc}")
            record(point, result)
    except BaseException:
        # Ctrl-C: a plain shutdown would wait for (and even start) the queued runs.
        workers_alive = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in workers_alive:
            process.terminate()
        for process in workers_alive:  # gone before we return: no worker outlives the command
            process.join(timeout=5.0)
            if process.is_alive():
                process.kill()
                process.join(timeout=5.0)
        raise
    pool.shutdown()


def _run_point_at(cwd: str, scenario_json: dict, run_dir: str):
    """A Ray task: one run, from the driver's working directory (scenario paths such as a policy checkpoint are
    relative to it; the cluster's nodes must see the same filesystem there, as on one machine or an NFS mount)."""
    os.chdir(cwd)
    return _run_point(scenario_json, run_dir)


def _run_on_ray(jobs: list, address: str, record) -> None:
    """Run `jobs` as tasks on the Ray cluster at `address`, each asking for as many CPUs as its torch threads,
    calling `record(point, result)` as each ends. On Ctrl-C the tasks are cancelled; if this process is killed,
    Ray fails the tasks it owned, and the next sweep redoes their unfinished directories."""
    import ray

    from fedsim.procs import check_ray_address

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray 2.55's FutureWarning on every init; runs use no GPU
    check_ray_address(address, "--ray-address")
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise FedsimError(f"--ray-address {address}: no Ray cluster there ({str(exc).splitlines()[0][:160]}); start one with `ray start --head`") from None
    pending: dict = {}
    try:
        task = ray.remote(max_retries=0)(_run_point_at)
        pending = {task.options(num_cpus=s.get("threads") or 1).remote(os.getcwd(), s, d): p for p, s, d in jobs}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            point = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # the task's worker died (out of memory, a lost node)
                result = (None, 0.0, None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
            record(point, result)
    finally:
        for ref in pending:  # Ctrl-C or an error here: no run goes on writing into the sweep directory
            ray.cancel(ref, force=True)
        ray.shutdown()


def _write_failed(out_dir: Path, failed: dict) -> None:
    if failed:
        atomic_write_text(out_dir / FAILED, json.dumps(failed, indent=2, sort_keys=True) + "\n")
    else:
        (out_dir / FAILED).unlink(missing_ok=True)


def default_out_dir(sweep_path: str | Path) -> Path:
    return Path("runs") / Path(sweep_path).stem


if __name__ == "__main__":  # pragma: no cover - `python -m fedsim.sweeps FILE` prints the points
    for p in load_sweep(sys.argv[1]).points:
        print(p.name)
