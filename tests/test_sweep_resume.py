"""Resume: SIGKILL a running sweep's whole process group twice, resume, and get exactly the uninterrupted results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fedsim.collect import write_results
from fedsim.sweeps import load_sweep, point_states, run_sweep

BASE = """\
name: tiny
rounds: 2
engine: inline
threads: 1          # the same thread count in the in-process baseline and in the 2 worker processes
model: {backbone: tiny-random}
data: {eval_samples: 16, eval_full_final: false}
clients: {num_clients: 4, per_round: 2}
train: {local_steps: 1, batch_size: 8}
adapter: {max_rank: 4}
policy: {name: fixed, rank: 4}
channel: {kind: rayleigh, target_rate_bps: 3.0e+5}
"""

SWEEP = """\
base: base.yaml
grid:
  channel.snr_db: [0, 15]
zip:
  data.partition.alpha: [0.1, 10]
  policy.rank: [2, 4]
seeds: [0, 1]
"""


def _start(sweep_path: Path, out: Path) -> subprocess.Popen:
    # Its own session = its own process group, so killpg reaches the spawned workers too.
    return subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", "sweep", str(sweep_path), "--out", str(out), "--workers", "2", "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _unfinished(out: Path) -> list[str]:
    return [p.name for p in out.glob("*-*") if p.is_dir() and not (p / "summary.json").exists()]


def test_sigkilled_sweep_resumes_to_the_uninterrupted_result(tmp_path):
    (tmp_path / "base.yaml").write_text(BASE)
    sweep_path = tmp_path / "sweep.yaml"
    sweep_path.write_text(SWEEP)
    sweep = load_sweep(sweep_path)
    assert len(sweep.points) == 8

    reference = tmp_path / "reference"
    run_sweep(sweep, reference, workers=1, progress=False)

    out = tmp_path / "killed"
    rng = np.random.default_rng(20261125)
    kills = 0
    killed_mid_run = 0
    while kills < 2:
        process = _start(sweep_path, out)
        # Wait until a run is under way (a directory without summary.json), then kill at a random moment.
        deadline = time.monotonic() + 120
        while not _unfinished(out) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.5))
        if process.poll() is not None:
            break  # the sweep finished before we could kill it again
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        kills += 1
        killed_mid_run += bool(_unfinished(out))
    assert kills == 2, "the sweep finished before it was killed twice; the tiny runs got too fast for this test"
    assert killed_mid_run >= 1, "no kill landed in the middle of a run"
    done_before_resume = sum(s == "done" for s in point_states(sweep, out).values())
    assert done_before_resume < 8

    process = _start(sweep_path, out)
    assert process.wait(timeout=300) == 0

    assert set(point_states(sweep, out).values()) == {"done"}
    run_dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert run_dirs == sorted(p.name for p in reference.iterdir() if p.is_dir()) == sorted(p.name for p in sweep.points)
    assert not (out / "failed.json").exists()
    for name in run_dirs:
        for ledger in ("rounds.csv", "clients.csv"):
            assert (out / name / ledger).read_bytes() == (reference / name / ledger).read_bytes(), f"{name}/{ledger}"
    write_results(out)
    write_results(reference)
    rows = (out / "results.csv").read_text().splitlines()
    assert rows == (reference / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 * 2 and len(set(rows)) == len(rows)  # header + one row per run per round, no duplicates
