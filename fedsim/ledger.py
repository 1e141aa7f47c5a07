"""The run directory: resolved config, per-round and per-client ledgers, final adapter, summary.

Every file is written to a temporary name and renamed into place, and
`summary.json` is written last: a directory without it is an unfinished run.
Wall-clock times are the only non-deterministic figures, so they live in their
own file (`timings.csv`) and `rounds.csv`/`clients.csv` stay byte-identical for
the same scenario and seed.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from fedsim.types import FedsimError

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
# Scenario fields (dotted paths) added after run directories existed, at their default: a run directory whose
# config.yaml lacks one ran at that default (fedsim.collect reads it so, where its parent section exists), and a
# sweep leaves a field at its default out of the run-directory hash (fedsim.sweeps.config_digest), so existing
# sweeps resume rather than rerun.
LATER_FIELDS = {
    "task": {"name": "classification"},
    "policy.reward.utility_weight": "update",
    "policy.reward.objective_credit": [],
    "policy.full_share_at": 1.0,
    "train.cohort_size": None,
}
LATER_POLICY_FIELDS = {"policy.full_share_at": "ppo"}  # a LATER_FIELDS field that only this policy has


def drop_later_defaults(data: dict) -> None:
    """Remove from a scenario dump every LATER_FIELDS field that is at its default."""
    for path, default in LATER_FIELDS.items():
        *parents, key = path.split(".")
        section = data
        for part in parents:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict) and section.get(key) == default:
            section.pop(key)


def later_defaults(flat_config: dict) -> dict:
    """The LATER_FIELDS defaults, flattened, that apply to a run with this flattened config (a field whose parent
    section the run lacks, such as a fixed policy's reward, is not added)."""
    filled = {}
    for path, default in LATER_FIELDS.items():
        parent = path.rpartition(".")[0]
        if parent and not any(k.startswith(parent + ".") for k in flat_config):
            continue
        if path in LATER_POLICY_FIELDS and flat_config.get("policy.name") != LATER_POLICY_FIELDS[path]:
            continue
        flat = {f"{path}.{k}": v for k, v in default.items()} if isinstance(default, dict) else {path: default}
        filled.update(flat)
    return filled


ALGORITHM_STATE = "algorithm_state.safetensors"  # the server state of fedadam, scaffold, ... at the end of the run
LOCK = ".fedsim.lock"  # held (flock) by the run writing the directory; gone when it ends


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask would, briefly, for every thread)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_permissions(path: Path) -> None:
    """Give `path` (and everything below it) the modes a plain mkdir/open would: 0777/0666 less the umask.

    mkdtemp and mkstemp create 0700/0600 entries, which would keep other users (and shared result
    directories) out of a run directory for no reason.
    """
    mask = current_umask()
    path = Path(path)
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
        os.chmod(path, 0o777 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
        normal_permissions(Path(tmp))
        os.replace(tmp, path)
    except BaseException:  # a full disk or Ctrl-C mid-write: no stray temporary file beside the ledger
        Path(tmp).unlink(missing_ok=True)
        raise


def strict_json(value):
    """`value` with every non-finite float replaced by None, so that json.dumps(allow_nan=False) accepts it.

    Python's json writes NaN/Infinity, which is not JSON: strict parsers (jq, JavaScript, Go) reject the file.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return strict_json(value.item())
    return value


def json_text(value) -> str:
    return json.dumps(strict_json(value), indent=2, sort_keys=True, allow_nan=False) + "\n"


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k, "")) for k in columns})
    return buffer.getvalue()


def accuracy_line(summary: dict) -> str:
    """`final accuracy: 0.4731 on 3080 test examples (round 1: 0.2969 on 64)`: each figure with the examples it was measured on."""
    metric = summary.get("metric", "accuracy")
    final, first = summary.get("final_eval_examples"), summary.get("first_round_eval_examples")
    on_final = f" on {final} test examples" if final is not None else ""
    on_first = f" on {first}" if first is not None else ""
    return f"final {metric}: {summary['final_accuracy']:.4f}{on_final} (round 1: {summary['first_round_accuracy']:.4f}{on_first})"


def format_float(value: float) -> str:
    """A ledger's text for a float: 10 decimals, and never fewer than 10 significant digits.

    Rounding to a fixed number of decimals alone wrote an over-the-air MSE of 3.4567e-11 as 0.0 and one of
    1.1e-9 with two digits; small quantities keep 10 significant digits instead.
    """
    value = float(value)  # a numpy scalar (a float subclass) would print as np.float64(...)
    if value == 0 or not math.isfinite(value):
        return repr(value)
    return repr(round(value, max(10, 9 - math.floor(math.log10(abs(value))))))


def _fmt(value):
    return format_float(value) if isinstance(value, float) else value


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
            normal_permissions(staging)
            final = self.path / "adapter"
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging)

    def save_arrays(self, name: str, arrays: dict, metadata: dict[str, str]) -> None:
        """Named float arrays as one safetensors file (e.g. the server optimiser's state); nothing when empty."""
        if not arrays:
            return
        from safetensors.numpy import save

        data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=metadata)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        normal_permissions(Path(tmp))
        os.replace(tmp, self.path / name)

    def finish(self, summary: dict) -> None:
        self.flush()
        atomic_write_text(self.path / SUMMARY, json_text(summary))


def is_finished(path: str | Path) -> bool:
    return (Path(path) / SUMMARY).is_file()


# ----------------------------------------------------------------------------- claiming a run directory


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_out_path(path: str | Path, overwrite: bool = False, unique: bool = False) -> None:
    """Cheap checks of a run directory path before anything is built: one FedsimError line each.

    The claim itself (`claim_run_dir`) is atomic; this only gives the usual mistakes a clear
    message early: a file in the way, a directory that already holds a run, no write permission.
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise FedsimError(f"--out {path}: name a run directory, not '{path.name or path}'")
    if path.exists() and not path.is_dir():
        raise FedsimError(f"--out {path}: is a file, not a directory")
    anchor = _first_existing(path.parent) if not path.exists() else path
    if not anchor.is_dir():
        raise FedsimError(f"--out {path}: {anchor} is a file, not a directory")
    if path.is_dir() and not unique and lock_held(path):
        raise _busy(path)
    if path.is_dir() and not unique and not overwrite and holds_files(path):
        state = "a finished run" if is_finished(path) else "files"
        raise FedsimError(f"--out {path}: already holds {state}; choose another directory or pass --overwrite")
    writable_dir = anchor if not (path.is_dir() and overwrite) else path.parent
    if not os.access(writable_dir, os.W_OK | os.X_OK):
        raise FedsimError(f"--out {path}: {writable_dir} is not writable")


def lock_held(path: Path) -> bool:
    """Whether a live fedsim run holds `path`'s lock (the kernel drops it when that run dies)."""
    try:
        fd = os.open(Path(path) / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _busy(path: Path) -> FedsimError:
    return FedsimError(f"--out {path}: another fedsim run is writing there; choose another directory")


def holds_files(path: Path) -> bool:
    try:
        return any(path.iterdir())
    except OSError as exc:
        raise FedsimError(f"--out {path}: cannot read the directory ({exc.strerror or exc})") from None


def _os_error(path: Path, exc: OSError, what: str) -> FedsimError:
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = _first_existing(path)
        return FedsimError(f"--out {path}: {blocker} is a file, not a directory")
    return FedsimError(f"--out {path}: cannot {what} ({exc.strerror or exc})")


class RunClaim:
    """A run directory this process owns: created exclusively (or an empty one, locked exclusively).

    `.fedsim.lock` inside it is created with O_EXCL and flock'ed for the life of the run, so a
    second run can neither share the directory nor `--overwrite` it while this one writes; the
    kernel drops the flock if the process dies. `release()` removes the lock file, and the
    directory itself if this run created it and never wrote anything into it.
    """

    def __init__(self, path: Path, created: bool, fd: int):
        self.path = path
        self.created = created
        self.fd = fd

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            (self.path / LOCK).unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self.fd)  # drops the flock
        self.fd = -1
        if self.created:
            try:
                self.path.rmdir()  # only succeeds when nothing was written: a run rejected before it started
            except OSError:
                pass


def _take_lock(path: Path, created: bool) -> RunClaim:
    lock = path / LOCK
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        raise _busy(path) from None
    except OSError as exc:
        raise _os_error(path, exc, "create files in the run directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a concurrent --overwrite is checking this very lock
        os.close(fd)
        raise _busy(path) from None
    os.write(fd, f"{os.getpid()}\n".encode())
    return RunClaim(path, created, fd)


def _replace_existing(path: Path) -> None:
    """--overwrite: move the old run aside and delete it, before anything new is written.

    Refused while a live run holds the old directory's lock (its writes would land in ours).
    """
    lock = path / LOCK
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o666)
    except OSError as exc:
        raise _os_error(path, exc, "lock the old run directory") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FedsimError(f"--out {path}: a fedsim run is still writing there; wait for it to end or choose another directory") from None
        aside = path.with_name(f".{path.name}.replaced-{os.getpid()}-{time.time_ns()}")
        try:
            os.rename(path, aside)
        except OSError as exc:
            raise _os_error(path, exc, "move the old run aside") from None
    finally:
        os.close(fd)
    shutil.rmtree(aside, ignore_errors=True)


def claim_run_dir(path: str | Path, overwrite: bool = False, unique: bool = False) -> RunClaim:
    """Claim `path` for one run, atomically (see RunClaim).

    - `unique`: `path` is a default name; when it is taken, `path-2`, `path-3`, ... is claimed instead.
    - `overwrite`: an existing directory is moved aside and deleted first (never mixed with the new run).
    - otherwise an existing directory must be empty.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(path, exc, f"create {path.parent}") from None
    candidates = [path] + ([path.with_name(f"{path.name}-{i}") for i in range(2, 10000)] if unique else [])
    for candidate in candidates:
        try:
            os.mkdir(candidate)
            return _take_lock(candidate, created=True)
        except FileExistsError:
            if unique:
                continue
        except FedsimError:
            raise
        except OSError as exc:
            raise _os_error(candidate, exc, "create the run directory") from None
        if not candidate.is_dir():
            raise FedsimError(f"--out {candidate}: is a file, not a directory")
        if lock_held(candidate):
            raise _busy(candidate)
        if overwrite:
            _replace_existing(candidate)
            try:
                os.mkdir(candidate)
            except FileExistsError:
                raise FedsimError(f"--out {candidate}: another fedsim run claimed it meanwhile; choose another directory") from None
            except OSError as exc:
                raise _os_error(candidate, exc, "create the run directory") from None
            return _take_lock(candidate, created=True)
        if holds_files(candidate):
            state = "a finished run" if is_finished(candidate) else "files"
            raise FedsimError(f"--out {candidate}: already holds {state}; choose another directory or pass --overwrite")
        return _take_lock(candidate, created=False)
    raise FedsimError(f"--out {path}: every name {path.name}-2 .. -9999 is taken; choose another directory")
