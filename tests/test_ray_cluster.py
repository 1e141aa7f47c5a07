"""An existing Ray cluster of two nodes on loopback (Ray's own `cluster_utils.Cluster`: a head and a second raylet,
as `ray start --head` and `ray start --address` make): `fedsim sweep --ray-address` runs its points there as tasks,
giving the local sweep's ledgers byte for byte and resuming after the driver is SIGKILLed mid-sweep, and a scenario's
`ray_address` puts Flower's simulation engine on it, giving the inline engine's ledgers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsim.runner import run_scenario
from fedsim.sweeps import load_sweep, run_sweep
from tests.conftest import tiny_scenario
from tests.test_golden import ledger_text

SWEEP = """base: {base}
set:
  model.backbone: tiny-random
  rounds: 2
  clients.num_clients: 4
  clients.per_round: 2
  train.local_steps: 4
  data.eval_samples: 32
  data.eval_full_final: false
  threads: 1        # what --workers 2 gives each Ray task here, so the in-process reference runs alike
grid:
  policy.rank: [1, 2, 4]
seeds: [0]
"""


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    head.add_node(num_cpus=1)
    head.wait_for_nodes()
    yield head.address
    head.shutdown()


def sweep_command(path: Path, out: Path, address: str) -> list[str]:
    return [sys.executable, "-m", "fedsim.cli", "sweep", str(path), "--out", str(out), "--workers", "2", "--no-progress", "--ray-address", address]


@pytest.mark.ray
def test_a_sweep_on_a_ray_cluster_matches_the_local_sweep_and_resumes_after_the_driver_is_killed(cluster, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(base=Path("scenarios/quickstart.yaml").resolve()))
    local = tmp_path / "local"
    run_sweep(load_sweep(path), local, workers=1, progress=False)  # in this process: no worker pays torch's imports

    remote = tmp_path / "ray"
    driver = subprocess.Popen(sweep_command(path, remote, cluster), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not any(remote.glob("*/summary.json")) and driver.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert driver.poll() is None, f"the sweep ended before it could be killed: {driver.stderr.read()[-500:]}"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = {p.parent.name for p in remote.glob("*/summary.json")}
    assert 1 <= len(finished) < 3

    resumed = subprocess.run(sweep_command(path, remote, cluster), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-1000:]
    assert f"3/3 runs done ({3 - len(finished)} ran now, {len(finished)} already done), 0 failed" in resumed.stdout
    names = sorted(p.name for p in local.iterdir() if p.is_dir())
    assert len(names) == 3 and names == sorted(p.name for p in remote.iterdir() if p.is_dir())
    for name in names:
        for ledger in ("rounds.csv", "clients.csv"):
            assert (remote / name / ledger).read_bytes() == (local / name / ledger).read_bytes(), (name, ledger)


def test_a_sweep_names_a_missing_ray_cluster_in_one_line(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(base=Path("scenarios/quickstart.yaml").resolve()))
    done = subprocess.run(sweep_command(path, tmp_path / "out", "127.0.0.1:1"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("fedsim sweep: error: --ray-address 127.0.0.1:1: no Ray cluster there"), done.stderr[-800:]
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.ray
@pytest.mark.flower
def test_flowers_simulation_engine_on_an_existing_ray_cluster_or_beside_it_gives_the_inline_ledger(cluster, tmp_path):
    # The cohort engine (the quickstart's): its one message per round on Flower's actor trains as in-process.
    scenario = tiny_scenario(engine="flower", ray_address=cluster, threads=1, train={"engine": "cohort"})
    # Without ray_address, a cluster running on the machine is not joined: the run starts a Ray of its own.
    run_scenario(scenario.model_copy(update={"ray_address": None}), tmp_path / "own", progress=False)
    summary = run_scenario(scenario, tmp_path / "cluster", progress=False)
    run_scenario(scenario.model_copy(update={"engine": "inline", "ray_address": None}), tmp_path / "inline", progress=False)
    # Every modelled number is equal; only wire_bytes_* differ, as the scenario each message carries names the cluster.
    for run in ("own", "cluster"):
        for name in ("rounds.csv", "clients.csv"):
            assert ledger_text(tmp_path / run / name) == ledger_text(tmp_path / "inline" / name), (run, name)
    assert summary["rounds"] == scenario.rounds


def test_a_ray_address_needs_the_flower_engine_and_a_cluster_that_answers(tmp_path):
    from fedsim.types import FedsimError

    with pytest.raises(FedsimError, match="ray_address=127.0.0.1:1 needs engine=flower"):
        tiny_scenario(ray_address="127.0.0.1:1")
    with pytest.raises(FedsimError, match="ray_address 127.0.0.1:1: no Ray cluster there"):
        run_scenario(tiny_scenario(engine="flower", ray_address="127.0.0.1:1"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
