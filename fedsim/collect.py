"""Collect finished run directories into one table: one row per run per round.

Columns: ``run_dir``, every varying scenario field (from the sweep's manifest,
plus any field whose value differs between the runs found), ``seed``, then
the run's ``rounds.csv`` columns, plus the cumulative uplink time and energy
(``cum_uplink_latency_s``, ``cum_energy_j``) that the plots use as x axes.
Only finished runs (``summary.json`` present) are read; unfinished ones are
ignored, so collecting during a sweep is safe.

``run_metrics`` gives one run's figures for a comparison (final accuracy, MB to a
fixed target, energy, rank, drops, episode reward); the statistics over seeds
(paired t-intervals, never = +inf) are in ``fedsim.stats``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from fedsim.ledger import SUMMARY, atomic_write_text, later_defaults
from fedsim.stats import to_target
from fedsim.types import FedsimError

CUMULATIVE = {"uplink_latency_s": "cum_uplink_latency_s", "energy_j": "cum_energy_j"}


@dataclass
class FinishedRun:
    path: Path
    config: dict  # flattened: dotted field -> value
    summary: dict
    rounds: list[dict]  # rounds.csv rows, numbers parsed

    @property
    def name(self) -> str:
        return self.path.name


def flatten(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def parse_number(text: str):
    try:
        number = float(text)
    except (TypeError, ValueError):
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def read_csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: parse_number(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def sweep_run_names(root: Path) -> set[str] | None:
    """The run directories of the sweep that last ran in `root` (its sweep.json), or None outside a sweep."""
    manifest = root / "sweep.json"
    if not manifest.is_file():
        return None
    return {point["dir"] for point in json.loads(manifest.read_text()).get("points", [])}


def find_finished_runs(root: str | Path) -> list[FinishedRun]:
    """Every finished run directory at or below `root`, sorted by path.

    In a sweep directory only the current sweep's points count: runs left by an edited sweep file
    (or by an older fedsim whose scenario schema hashed differently) stay on disk but out of the results.
    """
    root = Path(root)
    members = sweep_run_names(root)
    runs = []
    for summary_path in sorted(root.rglob(SUMMARY)):
        run_dir = summary_path.parent
        if members is not None and run_dir.name not in members:
            continue
        if not (run_dir / "rounds.csv").is_file() or not (run_dir / "config.yaml").is_file():
            continue
        config = flatten(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
        config = {**later_defaults(config), **config}  # a run from before a field existed ran at its default
        summary = json.loads(summary_path.read_text())
        runs.append(FinishedRun(run_dir, config, summary, read_csv_rows(run_dir / "rounds.csv")))
    return runs


def varying_fields(root: Path, runs: list[FinishedRun]) -> list[str]:
    """The sweep's grid fields (manifest order) plus any other field that differs across runs."""
    fields: list[str] = []
    manifest = root / "sweep.json"
    if manifest.is_file():
        fields = [f for f in json.loads(manifest.read_text()).get("fields", []) if f != "seed"]
    ignored = {"seed", "threads", "engine", "ray_address"}
    for key in sorted({k for r in runs for k in r.config}):
        if key in fields or key in ignored:
            continue
        values = {json.dumps(r.config.get(key), sort_keys=True) for r in runs}
        if len(values) > 1:
            fields.append(key)
    return fields


def _cell(value):
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return "" if value is None else value


def results_table(root: str | Path) -> tuple[list[str], list[dict], list[FinishedRun], list[str]]:
    """(columns, rows, runs, varying fields) for every finished run under `root`."""
    root = Path(root)
    runs = find_finished_runs(root)
    fields = varying_fields(root, runs)
    round_columns: list[str] = []
    for run in runs:
        for row in run.rounds[:1]:
            round_columns.extend(k for k in row if k not in round_columns)
    extra = [CUMULATIVE[k] for k in CUMULATIVE if k in round_columns and CUMULATIVE[k] not in round_columns]
    columns = ["run_dir", *fields, "seed", *round_columns, *extra]
    rows = []
    for run in runs:
        totals = dict.fromkeys(CUMULATIVE, 0.0)
        labels = {f: _cell(run.config.get(f)) for f in fields}
        for row in run.rounds:
            out = {"run_dir": str(run.path.relative_to(root)) if run.path != root else run.name, **labels, "seed": run.config.get("seed")}
            out.update(row)
            for key, cum in CUMULATIVE.items():
                if key in row and isinstance(row[key], (int, float)):
                    totals[key] += row[key]
                    out.setdefault(cum, totals[key])
            rows.append(out)
    return columns, rows, runs, fields


def write_results(root: str | Path) -> tuple[Path, Path | None, int, int]:
    """Write results.csv (and results.parquet when pyarrow is importable); returns (csv, parquet, runs, rows)."""
    root = Path(root)
    columns, rows, runs, _ = results_table(root)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(round(v, 10)) if isinstance(v, float) else v) for k, v in row.items() if k in columns})
    csv_path = root / "results.csv"
    atomic_write_text(csv_path, buffer.getvalue())
    parquet_path = None
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        pass
    else:
        table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])
        parquet_path = root / "results.parquet"
        tmp = root / ".results.parquet.tmp"
        pq.write_table(table, tmp)
        tmp.replace(parquet_path)
    return csv_path, parquet_path, len(runs), len(rows)


# --- per-run figures for comparisons over seeds (fedsim.stats; benchmarks/policy_table.py, snr_table.py) ---

REWARD_SUMMARY_KEYS = ("episode_reward", "return", "reward")


def policy_label(config: dict) -> str:
    """'fixed-8' for a fixed policy (its rank is what distinguishes it), else the policy's name."""
    name = config.get("policy.name")
    return f"{name}-{config.get('policy.rank')}" if name == "fixed" else str(name)


def episode_reward(run: FinishedRun) -> float | None:
    """The run's episode reward: the sum of rounds.csv's per-round `reward` where present, else a summary
    field (episode_reward / return / reward); None when the run recorded no reward."""
    values = [row["reward"] for row in run.rounds if isinstance(row.get("reward"), (int, float)) and math.isfinite(row["reward"])]
    if values:
        return float(sum(values))
    for key in REWARD_SUMMARY_KEYS:
        value = run.summary.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


@dataclass(frozen=True)
class RunMetrics:
    """One run's figures for a comparison over seeds; the statistics over seeds live in fedsim.stats."""

    seed: int
    final_accuracy: float  # the last round's accuracy
    final_eval_examples: int | None  # how many test examples that last evaluation used
    eval_full_final: bool | None  # whether the scenario evaluates the last round on the whole test set
    mb_to_target: float  # MB uploaded (cum_bytes_up) at the first round with accuracy >= target; inf: never
    energy_j: float  # sum of the rounds' energy_j
    mean_rank: float  # mean over rounds of the round's mean rank
    dropped: int
    selected: int
    reward: float | None  # episode_reward(run)


def run_metrics(run: FinishedRun, target: float) -> RunMetrics:
    """The figures `benchmarks/policy_table.py` compares, for one finished run and a fixed accuracy target."""
    last = run.rounds[-1]

    def total(column):
        return sum(row[column] for row in run.rounds if isinstance(row.get(column), (int, float)))

    ranks = [row["mean_rank"] for row in run.rounds if isinstance(row.get("mean_rank"), (int, float))]
    examples = last.get("eval_examples")
    full = run.config.get("data.eval_full_final")
    return RunMetrics(
        seed=run.config.get("seed"),
        final_accuracy=float(last["accuracy"]),
        final_eval_examples=int(examples) if isinstance(examples, (int, float)) else None,
        eval_full_final=bool(full) if full is not None else None,
        mb_to_target=to_target(run.rounds, target) / 1e6,
        energy_j=float(total("energy_j")),
        mean_rank=float(sum(ranks) / len(ranks)) if ranks else math.nan,
        dropped=int(total("clients_dropped")),
        selected=int(total("clients_selected")),
        reward=episode_reward(run),
    )


def by_seed(runs: list[FinishedRun], what: str = "this group") -> dict:
    """{seed: run}; two runs with one seed in a group would be averaged or paired wrongly, so that is an error."""
    seeds: dict = {}
    for run in runs:
        seed = run.config.get("seed")
        if seed in seeds:
            raise FedsimError(f"{what}: runs {seeds[seed].name} and {run.name} both have seed {seed}; they differ in a field the grouping ignores")
        seeds[seed] = run
    return seeds
