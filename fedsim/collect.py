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
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from fedsim.ledger import ROUND_COLUMNS, SUMMARY, atomic_write_text, format_float, later_defaults
from fedsim.provenance import code_label
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


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FedsimError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); the file is corrupt") from None
    except OSError as exc:
        raise FedsimError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object (summary.json, sweep.json); anything else is a one-line FedsimError."""
    text = _read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FedsimError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); the file is truncated or corrupt") from None
    if not isinstance(value, dict):
        raise FedsimError(f"{path}: holds a JSON {type(value).__name__}; expected a JSON object {{...}}; the file is corrupt")
    return value


def read_yaml_object(path: Path) -> dict:
    """A run's config.yaml as a mapping (empty file: {}); invalid YAML or another type is a one-line FedsimError."""
    text = _read_text(path)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        from fedsim.config import yaml_problem  # only on this error: the scenario schema is a slow import

        problem, where = yaml_problem(exc)
        raise FedsimError(f"{path}: not valid YAML ({problem}{where}); the file is truncated or corrupt") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FedsimError(f"{path}: holds a YAML {type(value).__name__}; expected a mapping of scenario fields; the file is corrupt")
    return value


def read_csv_rows(path: Path) -> list[dict]:
    """A CSV ledger's rows, numbers parsed; a row with more or fewer fields than the header is a FedsimError."""
    text = _read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        for row in reader:
            if None in row or None in row.values():
                _ragged(path, reader)
            rows.append({k: parse_number(v) for k, v in row.items()})
    except csv.Error as exc:
        raise FedsimError(f"{path}, line {reader.line_num}: not valid CSV ({exc}); the file is corrupt") from None
    return rows


def _ragged(path: Path, reader: csv.DictReader):
    raise FedsimError(
        f"{path}, line {reader.line_num}: a row with another number of fields than the header's {len(reader.fieldnames or [])}; the file is truncated or corrupt"
    )


# rounds.csv as fedsim.ledger writes it: the ROUND_COLUMNS always hold a number (these whole numbers; the others
# a float, nan where a run diverged or no update was trained); the extra columns that follow (the round record's
# other fields, a channel block's, an engine's, the validation split's) are numbers too, but empty in a round that
# did not write them (rounds before the column first appeared).
INTEGER_ROUND_COLUMNS = ("round", "eval_examples", "bytes_up", "bytes_down", "cum_bytes_up", "cum_bytes_down", "clients_selected", "clients_dropped")


def read_rounds(path: Path, rounds: int | None = None) -> list[dict]:
    """A finished run's rounds.csv, checked: the text ends with a line end, every row has every header field,
    row i is round i, every cell is a number (a whole number in INTEGER_ROUND_COLUMNS; empty, read as None, only in the extra
    columns), and there are `rounds` rows (summary.json's count, when given; at least one in any case).
    Anything else is a one-line FedsimError naming the file and line."""
    text = _read_text(path)
    if not text.strip():
        raise FedsimError(f"{path}: empty; expected a header line and one row per round")
    if not text.endswith("\n"):
        raise FedsimError(f"{path}, line {text.count(chr(10)) + 1}: the last line has no line end; the file is truncated")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        header = reader.fieldnames or []
        if "round" not in header:
            raise FedsimError(f"{path}, line 1: no 'round' column in the header; the file is corrupt")
        for row in reader:
            if None in row or None in row.values():
                _ragged(path, reader)
            where = f"{path}, line {reader.line_num}"
            for column, cell in row.items():
                if cell == "" and column not in ROUND_COLUMNS:
                    continue
                if column in INTEGER_ROUND_COLUMNS:
                    try:
                        whole = float(cell).is_integer()  # "1250000.0" (a ledger written by pandas) is a whole number too
                    except ValueError:
                        whole = False
                    if not whole:
                        raise FedsimError(f"{where}: {column} = {cell!r} is not a whole number; the file is corrupt")
                    continue
                try:
                    float(cell)
                except ValueError:
                    allowed = "a number or nan" if column in ROUND_COLUMNS else "a number, nan or empty"
                    raise FedsimError(f"{where}: {column} = {cell!r} is not a number (allowed: {allowed}); the file is corrupt") from None
            if int(row["round"]) != len(rows) + 1:
                raise FedsimError(f"{where}: round {row['round']} where round {len(rows) + 1} belongs; rows are missing, repeated or out of order")
            rows.append({k: None if v == "" else parse_number(v) for k, v in row.items()})  # empty: a column that round did not write
    except csv.Error as exc:
        raise FedsimError(f"{path}, line {reader.line_num}: not valid CSV ({exc}); the file is corrupt") from None
    if not rows:
        raise FedsimError(f"{path}: a header and no round rows; a finished run has at least one round; the ledger is truncated or corrupt")
    if rounds is not None and len(rows) != rounds:
        raise FedsimError(
            f"{path}: {len(rows)} round rows, but summary.json says the run had {rounds} round{'s' if rounds != 1 else ''}; the ledger is truncated or corrupt"
        )
    return rows


def read_manifest(root: Path) -> dict | None:
    """`root`/sweep.json, checked (points: [{dir: ...}], fields: [...], zip_groups: [[...]]); None outside a sweep."""
    manifest = Path(root) / "sweep.json"
    if not manifest.is_file():
        return None
    data = read_json_object(manifest)
    points = data.get("points", [])
    if not isinstance(points, list) or not all(isinstance(p, dict) and isinstance(p.get("dir"), str) for p in points):
        raise FedsimError(f"{manifest}: 'points' is not a list of {{\"dir\": NAME, ...}}; the file is corrupt (a re-run of `fedsim sweep` rewrites it)")
    fields = data.get("fields", [])
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise FedsimError(f"{manifest}: 'fields' is not a list of field names; the file is corrupt (a re-run of `fedsim sweep` rewrites it)")
    groups = data.get("zip_groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, list) and all(isinstance(f, str) for f in g) for g in groups):
        raise FedsimError(f"{manifest}: 'zip_groups' is not a list of lists of field names; the file is corrupt (a re-run of `fedsim sweep` rewrites it)")
    return data


def sweep_run_names(root: Path) -> set[str] | None:
    """The run directories of the sweep that last ran in `root` (its sweep.json), or None outside a sweep."""
    manifest = read_manifest(root)
    if manifest is None:
        return None
    return {point["dir"] for point in manifest.get("points", [])}


def read_finished_run(run_dir: str | Path) -> FinishedRun:
    """One finished run directory (summary.json, config.yaml, rounds.csv), every file checked: corrupt JSON or YAML,
    a ragged or non-numeric rounds.csv, or fewer/more rows than summary.json's `rounds` is a one-line FedsimError
    naming the file (and line). `fedsim collect`, `fedsim plot` and the benchmarks read runs through this."""
    run_dir = Path(run_dir)
    summary_path = run_dir / SUMMARY
    summary = read_json_object(summary_path)
    count = summary.get("rounds")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise FedsimError(f"{summary_path}: rounds = {count!r}; expected a whole number of rounds, at least 1; the file is corrupt")
    layers = summary.get("layers")
    if layers is not None and (not isinstance(layers, list) or not all(isinstance(name, str) for name in layers)):
        raise FedsimError(f"{summary_path}: layers = {str(layers)[:60]!r}; expected a list of layer names; the file is corrupt")
    for name in ("config.yaml", "rounds.csv"):
        if not (run_dir / name).is_file():
            raise FedsimError(f"{run_dir / name}: missing; a finished run (it has {SUMMARY}) has config.yaml and rounds.csv; the directory is incomplete")
    config = flatten(read_yaml_object(run_dir / "config.yaml"))
    config = {**later_defaults(config), **config}  # a run from before a field existed ran at its default
    return FinishedRun(run_dir, config, summary, read_rounds(run_dir / "rounds.csv", count))


def find_finished_runs(root: str | Path) -> list[FinishedRun]:
    """Every finished run directory at or below `root`, sorted by path, read and checked (`read_finished_run`).

    In a sweep directory only the current sweep's points count: runs left by an edited sweep file
    (or by an older fedsim whose scenario schema hashed differently) stay on disk but out of the results.
    Directories whose names start with "." (a run being replaced by --overwrite, a staging area) and a summary.json
    without config.yaml and rounds.csv beside it are not runs; one without just one of them is a FedsimError.
    """
    root = Path(root)
    members = sweep_run_names(root)
    runs = []
    for summary_path in sorted(root.rglob(SUMMARY)):
        run_dir = summary_path.parent
        if any(part.startswith(".") for part in run_dir.relative_to(root).parts):
            continue
        if members is not None and run_dir.name not in members:
            continue
        if not (run_dir / "rounds.csv").exists() and not (run_dir / "config.yaml").exists():
            continue  # some other tool's summary.json, not a run directory
        runs.append(read_finished_run(run_dir))
    return runs


def varying_fields(root: Path, runs: list[FinishedRun]) -> list[str]:
    """The sweep's grid fields (manifest order) plus any other field that differs across runs."""
    manifest = read_manifest(root)
    fields: list[str] = [f for f in manifest.get("fields", []) if f != "seed"] if manifest is not None else []
    ignored = {"seed", "threads", "engine", "ray_address"}
    for key in sorted({k for r in runs for k in r.config}):
        if key in fields or key in ignored:
            continue
        values = {json.dumps(r.config.get(key), sort_keys=True) for r in runs}
        if len(values) > 1:
            fields.append(key)
    return fields


def field_value(config: dict, field: str):
    """A run's value of a varying field; for "policy" (a sweep that zips whole policy blocks names that field), whose
    parts the flattened config holds apart, its `policy_label`."""
    if field == "policy" and field not in config and "policy.name" in config:
        return policy_label(config)
    return config.get(field)


def _cell(value):
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return "" if value is None else value


def run_dir_name(root: Path, run: FinishedRun) -> str:
    """The run's `run_dir` in results_table's rows: its directory relative to `root`."""
    return str(run.path.relative_to(root)) if run.path != root else run.name


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
        labels = {f: _cell(field_value(run.config, f)) for f in fields}
        for row in run.rounds:
            out = {"run_dir": run_dir_name(root, run), **labels, "seed": run.config.get("seed")}
            out.update(row)
            for key, cum in CUMULATIVE.items():
                if key in row and isinstance(row[key], (int, float)):
                    totals[key] += row[key]
                    out.setdefault(cum, totals[key])
            rows.append(out)
    return columns, rows, runs, fields


def provenance_note(runs: list[FinishedRun]) -> str | None:
    """One line when the runs were not all made by one commit of fedsim (+changes: with uncommitted changes), with the
    same libraries, on one model of CPU (summary.json's `environment`, `fedsim.provenance`): their ledgers then need
    not compare byte for byte. None when they were, or when no run recorded it (fedsim before 2026-11-27)."""
    recorded = [run.summary["environment"] for run in runs if isinstance(run.summary.get("environment"), dict)]
    if not recorded:
        return None
    parts = []
    commits = Counter(code_label(e.get("fedsim_commit"), e.get("fedsim_dirty")) for e in recorded)
    if len(commits) > 1:
        parts.append(f"{len(commits)} fedsim commits ({', '.join(f'{c} x{n}' for c, n in commits.most_common())})")
    # default=str and str(): a hand-edited summary.json must not turn a note into a traceback.
    libraries = {json.dumps(e.get("libraries"), sort_keys=True, default=str) for e in recorded}
    if len(libraries) > 1:
        parts.append(f"{len(libraries)} sets of library versions")
    cpus = {str(e.get("cpu")) for e in recorded}
    if len(cpus) > 1:
        parts.append(f"{len(cpus)} models of CPU")
    if len(recorded) < len(runs):
        parts.append(f"{len(runs) - len(recorded)} runs from an older fedsim that recorded none")
    if not parts:
        return None
    return (
        f"note: these {len(runs)} runs were made by {'; '.join(parts)}: runs repeat byte for byte only with the same code, "
        "libraries and CPU (each run's summary.json, `environment`)"
    )


def write_results(root: str | Path, table: tuple | None = None) -> tuple[Path, Path | None, int, int]:
    """Write results.csv (and results.parquet when pyarrow is importable); returns (csv, parquet, runs, rows).

    `table`: results_table(root), when the caller has it already (to check it before anything is written).
    Both files are written to temporary names and renamed into place, the parquet one (which can fail on the
    data) first made and last renamed: an error leaves the old files as they were, and is a one-line FedsimError.
    """
    root = Path(root)
    columns, rows, runs, _ = table if table is not None else results_table(root)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (format_float(v) if isinstance(v, float) else v) for k, v in row.items() if k in columns})
    csv_path = root / "results.csv"
    parquet_path = None
    tmp = None
    try:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            pass
        else:
            parquet_path = root / "results.parquet"
            tmp = root / f".results.parquet.{os.getpid()}.tmp"
            try:
                pq.write_table(pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]), tmp)
            except pa.ArrowException as exc:
                raise FedsimError(f"{parquet_path}: cannot write it ({str(exc).splitlines()[0]}); nothing was written") from None
        atomic_write_text(csv_path, buffer.getvalue())
        if tmp is not None:
            tmp.replace(parquet_path)
    except OSError as exc:
        raise FedsimError(f"{root}: cannot write results.csv there ({exc.strerror or exc}); allowed: a writable directory") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return csv_path, parquet_path, len(runs), len(rows)


# --- per-run figures for comparisons over seeds (fedsim.stats; benchmarks/policy_table.py, snr_table.py) ---

REWARD_SUMMARY_KEYS = ("episode_reward", "return", "reward")


def policy_label(config: dict) -> str:
    """'fixed-8' for a fixed policy (its rank is what distinguishes it), 'fixed-[2,4]' for one with per-layer
    `ranks` (which override `rank`), else the policy's name."""
    name = config.get("policy.name")
    if name != "fixed":
        return str(name)
    ranks = config.get("policy.ranks")
    if isinstance(ranks, list):
        return f"{name}-[{','.join(str(r) for r in ranks)}]"
    return f"{name}-{config.get('policy.rank')}"


def check_one_policy_config(runs: list[FinishedRun], label: str, where: str) -> None:
    """A one-line FedsimError when the runs of one policy label differ in a policy field (a checkpoint, adalora's
    schedule): a report pools a label's runs over seeds, so two configurations there would be averaged as one."""
    for key in sorted({k for run in runs for k in run.config if k.startswith("policy.")}):
        values = sorted({json.dumps(run.config.get(key), sort_keys=True) for run in runs})
        if len(values) > 1:
            raise FedsimError(
                f"{where}: the {label} runs differ in {key} ({', '.join(values)}), and a report averages a policy's runs over "
                "seeds; give each configuration its own directory (or compare them with benchmarks/policy_table.py, which labels them apart)"
            )


def episode_reward(run: FinishedRun) -> float | None:
    """The run's episode reward: the sum of rounds.csv's per-round `reward` where present, else a summary
    field (episode_reward / return / reward); None when the run recorded no reward. NaN when a round's reward
    is not finite: only a diverged validation loss makes it so, and summing the other rounds would score the
    diverged run above one that did not diverge."""
    values = [row["reward"] for row in run.rounds if isinstance(row.get("reward"), (int, float))]
    if values:
        return float(sum(values)) if all(math.isfinite(v) for v in values) else math.nan
    for key in REWARD_SUMMARY_KEYS:
        value = run.summary.get(key)
        if isinstance(value, (int, float)):
            return float(value) if math.isfinite(value) else math.nan
    return None


def _data_field(config: dict, name: str):
    """data.`name` of a run, or the scenario default where its config.yaml lacks it (a hand-written run)."""
    key = f"data.{name}"
    if key in config:
        return config[key]
    from fedsim.config import DataConfig  # only here: the scenario schema is a slow import the tables rarely need

    return DataConfig.model_fields[name].default


def evaluated_on_whole_test_set(run: FinishedRun, row: dict) -> bool:
    """Whether this rounds.csv row of `run` was evaluated on the whole test set, as fedsim.strategy chooses: every
    round with data.eval_samples null (or larger than the test set), else the last round with data.eval_full_final,
    else the per-round subset."""
    samples = _data_field(run.config, "eval_samples")
    examples = row.get("eval_examples")
    test_examples = run.summary.get("test_examples")  # recorded since 2026-11-27; older runs leave it to the rules below
    if isinstance(test_examples, int) and isinstance(examples, (int, float)):
        return examples == test_examples
    # Fewer examples than a subset the run asked for: its test set is smaller, and the subset is all of it. (A test set of
    # exactly eval_samples examples reads as a subset here: without test_examples the two look the same.)
    if samples is None or ("data.eval_samples" in run.config and isinstance(examples, (int, float)) and examples < samples):
        return True
    return bool(_data_field(run.config, "eval_full_final")) and row.get("round") == len(run.rounds)


@dataclass(frozen=True)
class RunMetrics:
    """One run's figures for a comparison over seeds; the statistics over seeds live in fedsim.stats."""

    seed: int
    final_accuracy: float  # the last round's accuracy
    final_eval_examples: int | None  # how many test examples that last evaluation used
    eval_full_final: bool  # whether the scenario evaluates the last round on the whole test set (absent: the default)
    eval_samples: int | None  # the per-round subset's size; None: every round is evaluated on the whole test set
    final_whole_test_set: bool  # whether the last round was evaluated on the whole test set
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
    return RunMetrics(
        seed=run.config.get("seed"),
        final_accuracy=float(last["accuracy"]),
        final_eval_examples=int(examples) if isinstance(examples, (int, float)) else None,
        eval_full_final=bool(_data_field(run.config, "eval_full_final")),
        eval_samples=_data_field(run.config, "eval_samples"),
        final_whole_test_set=evaluated_on_whole_test_set(run, last),
        mb_to_target=to_target(run.rounds, target) / 1e6,
        energy_j=float(total("energy_j")),
        mean_rank=float(sum(ranks) / len(ranks)) if ranks else math.nan,
        dropped=int(total("clients_dropped")),
        selected=int(total("clients_selected")),
        reward=episode_reward(run),
    )


def by_seed(runs: list[FinishedRun], what: str = "this group", why: str = "they differ in a field the grouping ignores") -> dict:
    """{seed: run}; two runs with one seed in a group would be averaged or paired wrongly, so that is an error
    (`why`: what the message says the two are and what to do)."""
    seeds: dict = {}
    for run in runs:
        seed = run.config.get("seed")
        if seed in seeds:
            raise FedsimError(f"{what}: runs {seeds[seed].name} and {run.name} both have seed {seed}; {why}")
        seeds[seed] = run
    return seeds
