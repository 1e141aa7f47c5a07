"""The run directory: resolved config, per-round and per-client ledgers, final adapter, summary.

Every file is written to a temporary name and renamed into place, and
`summary.json` is written last: a directory without it is an unfinished run.
Wall-clock times are the only non-deterministic figures, so they live in their
own file (`timings.csv`) and `rounds.csv`/`clients.csv` stay byte-identical for
the same scenario and seed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

ROUND_COLUMNS = [
    "round",
    "accuracy",
    "loss",
    "eval_examples",
    "bytes_up",
    "bytes_down",
    "cum_bytes_up",
    "cum_bytes_down",
    "uplink_latency_s",
    "energy_j",
    "mean_rank",
    "clients_selected",
    "clients_dropped",
    "train_loss",
]

CLIENT_COLUMNS = [
    "round",
    "client",
    "ranks",
    "mean_rank",
    "params_up",
    "bytes_up",
    "bytes_down",
    "snr_db",
    "fading_gain",
    "bandwidth_hz",
    "rate_bps",
    "latency_s",
    "energy_j",
    "delivered",
    "drop_reason",
    "num_examples",
    "train_loss",
]

SUMMARY = "summary.json"


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", newline="") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k, "")) for k in columns})
    return buffer.getvalue()


def _fmt(value):
    if isinstance(value, float):
        return repr(round(value, 10))
    return value


class RunDirectory:
    """Owns one run directory. `start()` clears any stale result, `finish()` seals it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rounds: list[dict] = []
        self.clients: list[dict] = []
        self.timings: list[dict] = []
        self.extra_round_columns: list[str] = []
        self.extra_client_columns: list[str] = []

    def start(self, config_yaml: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / SUMMARY).unlink(missing_ok=True)
        atomic_write_text(self.path / "config.yaml", config_yaml)

    def add_round(self, row: dict, client_rows: list[dict], wall_s: float) -> None:
        self.rounds.append(row)
        self.clients.extend(client_rows)
        self.timings.append({"round": row["round"], "wall_s": round(wall_s, 3)})
        for extra, base, rows in (
            (self.extra_round_columns, ROUND_COLUMNS, [row]),
            (self.extra_client_columns, CLIENT_COLUMNS, client_rows),
        ):
            for r in rows:
                extra.extend(k for k in r if k not in base and k not in extra)
        self.flush()

    def flush(self) -> None:
        atomic_write_text(self.path / "rounds.csv", _csv_text(ROUND_COLUMNS + self.extra_round_columns, self.rounds))
        atomic_write_text(self.path / "clients.csv", _csv_text(CLIENT_COLUMNS + self.extra_client_columns, self.clients))
        atomic_write_text(self.path / "timings.csv", _csv_text(["round", "wall_s"], self.timings))

    def save_adapter(self, save_fn) -> None:
        """`save_fn(directory)` writes the PEFT adapter; it lands in `adapter/` only when complete."""
        staging = Path(tempfile.mkdtemp(dir=self.path, prefix=".adapter."))
        try:
            save_fn(staging)
            final = self.path / "adapter"
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging)

    def finish(self, summary: dict) -> None:
        self.flush()
        atomic_write_text(self.path / SUMMARY, json.dumps(summary, indent=2, sort_keys=True) + "\n")


def is_finished(path: str | Path) -> bool:
    return (Path(path) / SUMMARY).is_file()
