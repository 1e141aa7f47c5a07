"""Flower's deployment engine on loopback: a real SuperLink and SuperNodes, `flwr run`, the same ledger as in-process.

Select these alone with `pytest -m deploy`. They start real processes (by default a warm
`fedsim-superexec` beside each SuperNode; `warm=False` is Flower's fresh `flwr-clientapp`
per message), so they use a small CSV corpus and 3 clients, and the warm tests submit their
runs to one standing federation (`warm_federation`), as `flwr run` does on real machines:
starting and stopping one costs ~20 s of processes importing torch.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fedsim.deploy import LocalFederation, deploy_local, with_absolute_paths
from fedsim.runner import run_scenario
from fedsim.types import FedsimError

BANKING77 = Path(__file__).resolve().parents[1] / "fedsim" / "data" / "banking77"
FLOWER_PROCESSES = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp", "flwr-clientapp", "flwr run", "fedsim.warm_node")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """Every 40th training and every 30th test example of BANKING77, with all 77 label names."""
    root = tmp_path_factory.mktemp("corpus")
    for name, step in (("train.csv", 40), ("test.csv", 30)):
        with open(BANKING77 / name, newline="") as src:
            rows = list(csv.reader(src))
        with open(root / name, "w", newline="") as dst:
            csv.writer(dst).writerows([rows[0], *rows[1::step]])
    shutil.copy(BANKING77 / "categories.json", root)
    return root


def deploy_scenario(tiny, corpus: Path, rounds: int = 2, clients: int = 3):
    return tiny(
        name="deploy",
        rounds=rounds,
        clients={"num_clients": clients, "per_round": clients},
        data={"dataset": str(corpus), "eval_samples": 48, "eval_full_final": False, "partition": {"kind": "iid"}},
        adapter={"max_rank": 4},
        policy={"name": "fixed", "rank": 4},
    )


def flower_pids_under(workdir: Path) -> list[int]:
    """PIDs of Flower processes that belong to this launch (their environment names its FLWR_HOME)."""
    home = str(workdir / "flwr-home")
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if any(name in cmdline for name in FLOWER_PROCESSES) and proc.environ().get("FLWR_HOME") == home:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def warm_federation(tmp_path_factory):
    """A SuperLink and 3 SuperNodes with warm SuperExecs, shared by this module's warm runs; none of their processes may outlive it."""
    workdir = tmp_path_factory.mktemp("warm-federation")
    with LocalFederation(3, workdir, log=lambda line: None) as federation:
        yield federation
    assert flower_pids_under(workdir) == []


def log_sizes(workdir: Path) -> list[int]:
    return [log.stat().st_size if (log := workdir / f"superexec-{i}.log").exists() else 0 for i in range(3)]


def superexec_tasks(workdir: Path, i: int, since: int) -> list[tuple[int, int, str]]:
    """(pid, task number, status) of every task SuperExec i logged after byte `since` of its log."""
    text = (workdir / f"superexec-{i}.log").read_bytes()[since:].decode("utf-8", "replace")
    return [(int(pid), int(n), status) for pid, n, status in re.findall(r"\[fedsim-superexec\] pid (\d+) ran task (\d+) \((\w+)\)", text)]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.deploy
# cold first: the shared warm federation, once started, polls in the background until the module ends
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_loopback_deployment_writes_the_same_ledger_as_the_inline_engine(tmp_path, tiny, small_corpus, warm, request):
    if warm:
        scenario = deploy_scenario(tiny, small_corpus)
        federation = request.getfixturevalue("warm_federation")
        workdir, before = federation.workdir, log_sizes(federation.workdir)
        summary = deploy_local(scenario, tmp_path / "deployed", num_nodes=3, round_timeout_s=None, federation=federation)
    else:
        # A fresh flwr-clientapp per message keeps nothing between messages, so one round on one node (a partition
        # query and a train message) exercises all of it; each message's process costs ~10 s of imports here.
        scenario = deploy_scenario(tiny, small_corpus, rounds=1, clients=1)
        workdir = tmp_path / "flower"
        request.getfixturevalue("monkeypatch").chdir(tmp_path)  # --workdir given relative, as users type it: Flower's processes run inside it
        summary = deploy_local(scenario, tmp_path / "deployed", num_nodes=1, round_timeout_s=None, workdir="flower", log=lambda line: None, warm=False)
        assert flower_pids_under(workdir) == [] and (workdir / "flwr-run.log").is_file()
    run_scenario(scenario, tmp_path / "inline", progress=False)

    for name in ("rounds.csv", "clients.csv"):
        deployed, inline = (tmp_path / "deployed" / name).read_text(), (tmp_path / "inline" / name).read_text()
        assert deployed.splitlines()[0] == inline.splitlines()[0], f"{name}: columns differ"
        assert deployed == inline, f"{name}: the deployment's ledger differs from the inline engine's"
    clients = read_csv(tmp_path / "deployed" / "clients.csv")
    assert all(int(r["wire_bytes_up"]) > int(r["bytes_up"]) for r in clients), "Flower's serialized upload is larger than the modelled bits"
    assert summary["rounds"] == scenario.rounds and (tmp_path / "deployed" / "adapter" / "adapter_model.safetensors").is_file()
    if warm:  # every message a node received (its partition query, then one train message a round) ran in one process
        for i in range(3):
            tasks = superexec_tasks(workdir, i, before[i])
            assert [status for _, _, status in tasks] == ["completed"] * 3, f"node {i}: {tasks}"
            assert [n for _, n, _ in tasks] == list(range(tasks[0][1], tasks[0][1] + 3)) and len({pid for pid, _, _ in tasks}) == 1, f"node {i}: {tasks}"


def test_relative_paths_that_exist_here_travel_as_absolute_ones(tmp_path, monkeypatch, tiny, small_corpus):
    """The federation's processes run in their own directory: a dataset `fedsim run` finds from here must be sent
    as the absolute path of what it found, and a built-in name must stay a name."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(small_corpus, tmp_path / "corpus")
    (tmp_path / "banking77").mkdir()  # a directory that happens to share the embedded dataset's name
    sent = with_absolute_paths(tiny(data={"dataset": "corpus"}))
    assert sent.data.dataset == str((tmp_path / "corpus").resolve()) and sent.model.backbone == "tiny-random"
    assert with_absolute_paths(tiny()).data.dataset == "banking77"


@pytest.mark.deploy
def test_a_killed_launcher_takes_its_federation_with_it(tmp_path):
    """deploy-local SIGKILLed (or OOM-killed): its SuperLink and SuperNodes run in their own sessions, and orphans would
    go on writing into a run directory whose lock died with the launcher."""
    workdir = tmp_path / "federation"
    code = (
        "import sys, time; from pathlib import Path; from fedsim.deploy import LocalFederation; "
        f"f = LocalFederation(1, Path({str(workdir)!r}), log=lambda line: None, warm=False); f.start(); print('up', flush=True); time.sleep(600)"
    )
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert launcher.stdout.readline().strip() == "up"
        assert flower_pids_under(workdir), "no SuperLink or SuperNode running"
        time.sleep(1.0)  # the watchdog notes descendants every 0.25 s: a kill in the same instant could beat it
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 10
        while flower_pids_under(workdir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert flower_pids_under(workdir) == []
    finally:
        for pid in flower_pids_under(workdir):
            os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()


def test_the_project_declares_a_valid_flower_app():
    """`flwr run . <connection>` reads [tool.flwr.app] from the project's pyproject.toml."""
    from flwr.cli.config_utils import load_and_validate

    config, _warnings = load_and_validate(Path(__file__).resolve().parents[1] / "pyproject.toml")
    app = config["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fedsim.server_app:app", "clientapp": "fedsim.client_app:app"}
    assert {"scenario", "out", "set", "round-timeout"} <= set(app["config"])


def test_a_plain_flwr_run_claims_its_run_directory_as_fedsim_run_does(tmp_path, tiny):
    """`flwr run . <connection> --run-config 'out=...'` into a finished run (or one being written) would have deleted
    its summary.json and written over its ledgers: the ServerApp refuses in one line before it touches anything."""
    from flwr.app import Context, RecordDict

    from fedsim.ledger import claim_run_dir
    from fedsim.server_app import main

    scenario = tiny(rounds=1, data={"eval_samples": 8})
    (tmp_path / "scenario.yaml").write_text(scenario.to_yaml())
    finished, busy = tmp_path / "finished", tmp_path / "busy"
    run_scenario(scenario, finished, progress=False)
    before = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()}

    def flwr_run(out: Path) -> None:
        config = {"scenario": str(tmp_path / "scenario.yaml"), "out": str(out), "set": "", "round-timeout": 0.0, "overwrite": False, "claimed": False}
        main(grid=None, context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))

    with pytest.raises(FedsimError, match=r"^out=.*finished: already holds a finished run; .* pass overwrite=true in --run-config$"):
        flwr_run(finished)
    assert {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()} == before
    claim = claim_run_dir(busy)  # another run writing there
    try:
        with pytest.raises(FedsimError, match=r"^out=.*busy"):
            flwr_run(busy)
    finally:
        claim.release()


def test_deploy_local_rejects_a_node_count_that_differs_from_the_clients(tmp_path, tiny):
    from fedsim.types import FedsimError

    with pytest.raises(FedsimError, match="--nodes 2"):
        deploy_local(tiny(), tmp_path / "run", num_nodes=2)
    standing = LocalFederation(2, tmp_path / "flower")  # never started: the check comes first
    with pytest.raises(FedsimError, match="num_nodes=6, but the federation given has 2 SuperNodes"):
        deploy_local(tiny(), tmp_path / "run", num_nodes=6, federation=standing)
    assert not (tmp_path / "run").exists()


def test_idle_polling_scales_with_the_federation_and_never_exceeds_flowers():
    from fedsim.deploy import FLOWER_SUPERNODE_POLL_S, POLLS_PER_S, default_poll_interval

    assert default_poll_interval(1) == default_poll_interval(3) == 0.1
    assert default_poll_interval(33) == pytest.approx(33 / POLLS_PER_S, abs=1e-3)
    assert default_poll_interval(10_000) == FLOWER_SUPERNODE_POLL_S


@pytest.mark.parametrize("value", ["0", "-1", "61"])
def test_deploy_local_rejects_a_poll_interval_out_of_range_in_one_line(tmp_path, capsys, value):
    from fedsim.cli import main

    out = tmp_path / "run"
    code = main(["deploy-local", "scenarios/quickstart.yaml", "--nodes", "20", "--poll-interval", value, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"--poll-interval {float(value)}" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("value", ["nan", "-1", "inf"])
def test_deploy_local_rejects_a_round_timeout_that_is_not_a_number_of_seconds(tmp_path, capsys, value):
    from fedsim.cli import main

    out = tmp_path / "run"
    code = main(["deploy-local", "scenarios/quickstart.yaml", "--nodes", "20", "--round-timeout", value, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--round-timeout" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.deploy
def test_a_client_that_raises_in_a_warm_node_is_recorded_and_the_node_keeps_serving(tmp_path, tiny, small_corpus, warm_federation):
    """The warm SuperExec runs the raising ClientApp in its own long-lived process: the error comes back as the
    client's reply (clients.csv: client-error with the exception), the process lives on for the next round, and a
    run that aggregated nothing is not finished."""
    scenario = deploy_scenario(tiny, small_corpus).model_copy(update={"tolerate_client_errors": True})
    scenario = scenario.model_copy(update={"train": scenario.train.model_copy(update={"head_lr": 1e38})})  # Adam overflows
    workdir, before = warm_federation.workdir, log_sizes(warm_federation.workdir)
    with pytest.raises(FedsimError, match=r"^[^\n]*no update was aggregated[^\n]*; logs in [^\n]*$") as failed:
        deploy_local(scenario, tmp_path / "run", num_nodes=3, round_timeout_s=None, federation=warm_federation)
    assert "Traceback" not in str(failed.value)  # the ServerApp's one line, as `fedsim run` gives it, not Flower's traceback
    assert "Traceback (most recent call last)" in (tmp_path / "run" / "client_errors.log").read_text()  # from the remote nodes

    clients = read_csv(tmp_path / "run" / "clients.csv")
    assert len(clients) == 6 and all(c["drop_reason"] == "client-error" and "RuntimeError" in c["error"] for c in clients)
    assert not (tmp_path / "run" / "summary.json").exists()
    for i in range(3):
        tasks = superexec_tasks(workdir, i, before[i])
        assert len(tasks) == 3 and len({pid for pid, _, _ in tasks}) == 1, f"node {i}: {tasks}"


@pytest.mark.deploy
def test_a_supernode_killed_in_round_one_is_dropped_and_rejoins_after_restart(tmp_path, tiny, small_corpus, warm_federation):
    """Last in this module: it leaves the shared federation with a restarted node 1.

    Round 1 closes without the dead node's reply (no-reply) at the 30 s round deadline, or before it once the
    SuperLink has missed two of the node's 30 s heartbeats and answers for it (30-60 s after the last one).
    Round 2 waits for the restarted node's SuperExec to load its runtime: ~15 s here, half the deadline."""
    scenario = deploy_scenario(tiny, small_corpus)
    victim = 1
    events: list[str] = []

    def chaos(federation: LocalFederation, line: str) -> None:
        if "[fedsim] round 1/2 started" in line and not events:
            federation.kill_node(victim)  # SIGKILL: the SuperNode and its superexec/clientapp children
            events.append("killed")
            federation.start_node(victim)  # comes back under a new node id
            events.append("restarted")

    deploy_local(scenario, tmp_path / "run", num_nodes=3, round_timeout_s=30.0, on_line=chaos, federation=warm_federation)

    assert events == ["killed", "restarted"]
    rows = {(int(r["round"]), int(r["client"])): r for r in read_csv(tmp_path / "run" / "clients.csv")}
    assert rows[(1, victim)]["delivered"] == "0" and rows[(1, victim)]["drop_reason"] == "no-reply"
    assert rows[(1, victim)]["wire_bytes_up"] == "0"
    assert rows[(2, victim)]["delivered"] == "1", "the restarted SuperNode did not rejoin in round 2"
    rounds = read_csv(tmp_path / "run" / "rounds.csv")
    assert [int(r["round"]) for r in rounds] == [1, 2]
    assert int(rounds[0]["clients_dropped"]) >= 1
