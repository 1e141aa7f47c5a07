"""`fedsim train-policy --out`: never overwrites silently, never leaves a mix of old and new files; the Python
API's argument checks; the benchmark scripts' one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_scenario

import fedsim
import fedsim.rl.train as train
from fedsim.api import scenario_of
from fedsim.cli import main
from fedsim.types import FedsimError
from policies.base import RankPolicy

ROOT = Path(__file__).resolve().parents[1]
SMALL_AIRLLM = {"coarse_dim": 2, "hidden": 16, "denoiser_hidden": 32, "denoiser_blocks": 1, "sampling_steps": 3, "train_timesteps": 20, "n_steps": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scenario_file(small_dataset):
    """tests/test_policies.py's tiny airllm training scenario on conftest's four-class slice of BANKING77."""
    root = Path(small_dataset)
    scenario = tiny_scenario(
        rounds=3,
        data={"dataset": str(root), "eval_samples": 16, "eval_full_final": False, "partition": {"kind": "iid"}, "validation_samples": 16},
        clients={"num_clients": 4, "per_round": 2},
        train={"local_steps": 1, "batch_size": 8},
        channel={"snr_db": 5.0, "deadline_s": 0.05},
        policy={"name": "airllm", **SMALL_AIRLLM},
    )
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(scenario.model_dump(mode="json")))
    return str(path)


@pytest.fixture
def old_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "policy.json").write_text('{"policy": "airllm", "old": true}')
    (ckpt / "weights.safetensors").write_bytes(b"old weights")
    return ckpt


def contents(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def fake_episodes(monkeypatch, interrupt_at: int | None = None):
    """Episodes that cost nothing (the environment is still built); the `interrupt_at`-th raises KeyboardInterrupt (Ctrl-C)."""
    calls = []

    def episode(env, policy):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return {"episode": 0, "seed": 3, "return": -1.0, "mean_rank": 2.0, "final_accuracy": 0.5, "bytes_up": 10, "wall_s": 0.0}

    monkeypatch.setattr(train, "_airllm_episode", episode)
    return calls


def train_cli(scenario: str, out: Path, *extra: str, episodes: int = 2) -> int:
    return main(["train-policy", scenario, "--episodes", str(episodes), "--out", str(out), "--no-progress", *extra])


# --- train-policy --out ---------------------------------------------------------------------------------


def test_train_policy_refuses_an_existing_checkpoint_before_building_anything(tmp_path, capsys, old_checkpoint, monkeypatch):
    before = contents(old_checkpoint)
    monkeypatch.setattr(train, "_train_into", lambda *a, **k: pytest.fail("training started"))
    # the scenario is not even read: the path is checked first
    assert train_cli(str(tmp_path / "missing.yaml"), old_checkpoint) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--out {old_checkpoint}: already holds a policy checkpoint" in err and "--overwrite" in err
    assert contents(old_checkpoint) == before and leftovers(tmp_path) == []


def test_train_policy_out_naming_a_file_is_one_line(tmp_path, capsys, scenario_file):
    target = tmp_path / "ckpt"
    target.write_text("not a directory")
    assert train_cli(scenario_file, target) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a directory" in err and "Traceback" not in err
    assert target.read_text() == "not a directory" and leftovers(tmp_path) == []


def test_train_policy_interrupted_leaves_the_old_checkpoint_untouched(tmp_path, capsys, scenario_file, old_checkpoint, monkeypatch):
    before = contents(old_checkpoint)
    calls = fake_episodes(monkeypatch, interrupt_at=2)  # one episode done (training.csv written), Ctrl-C in the second
    assert train_cli(scenario_file, old_checkpoint, "--overwrite", episodes=3) == 130
    assert len(calls) == 2
    assert contents(old_checkpoint) == before  # no new training.csv beside the old policy.json and weights
    assert leftovers(tmp_path) == []  # the staging directory is gone
    assert "interrupted; no checkpoint written" in capsys.readouterr().err


def test_train_policy_interrupted_into_a_new_directory_creates_nothing(tmp_path, capsys, scenario_file, monkeypatch):
    fake_episodes(monkeypatch, interrupt_at=2)
    assert train_cli(scenario_file, tmp_path / "new" / "ckpt", episodes=3) == 130
    assert not (tmp_path / "new" / "ckpt").exists() and leftovers(tmp_path / "new") == []
    capsys.readouterr()


def test_train_policy_overwrite_replaces_the_whole_directory(tmp_path, capsys, scenario_file, old_checkpoint, monkeypatch):
    (old_checkpoint / "notes.txt").write_text("from the old training")
    fake_episodes(monkeypatch)
    assert train_cli(scenario_file, old_checkpoint, "--overwrite") == 0
    after = contents(old_checkpoint)  # (no weights: fake episodes never build airllm's networks)
    assert "notes.txt" not in after and {"policy.json", "training.csv"} <= set(after) and b"old weights" not in after.values()
    assert json.loads((old_checkpoint / "policy.json").read_text())["state"]["training"]["episodes"] == 2
    assert len(list(csv.DictReader((old_checkpoint / "training.csv").open()))) == 2
    assert leftovers(tmp_path) == []
    assert f"checkpoint: {old_checkpoint}" in capsys.readouterr().out


def test_train_policy_into_an_empty_directory_needs_no_overwrite(tmp_path, capsys, scenario_file, monkeypatch):
    (tmp_path / "ckpt").mkdir()
    fake_episodes(monkeypatch)
    assert train_cli(scenario_file, tmp_path / "ckpt", episodes=1) == 0
    assert (tmp_path / "ckpt" / "policy.json").is_file() and leftovers(tmp_path) == []
    capsys.readouterr()


class TinyNet(RankPolicy):
    """A policy with one learned tensor (airllm and ppo build theirs only on their first observation)."""

    name = "tinynet"

    def __init__(self, config, value: float = 0.0):
        super().__init__(config)
        self.w = torch.full((3,), value)

    def ranks(self, observation):
        return np.zeros((observation.n_clients, observation.n_layers), dtype=np.int64)

    def state_dict(self) -> dict:
        return {"value": float(self.w[0])}

    def tensors(self) -> dict:
        return {"w": self.w}

    def load_tensors(self, tensors: dict, source: Path) -> None:
        self.w = tensors["w"]


def test_policy_save_never_leaves_a_truncated_file(tmp_path, monkeypatch):
    import safetensors.torch

    from policies.fixed import FixedConfig

    ckpt = tmp_path / "ckpt"
    TinyNet(FixedConfig(rank=2), 1.0).save(ckpt)
    before = contents(ckpt)
    assert sorted(before) == ["policy.json", "weights.safetensors"]

    def interrupted_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        TinyNet(FixedConfig(rank=2), 2.0).save(ckpt)
    assert contents(ckpt) == before  # neither file touched, no temporary file left
    monkeypatch.undo()
    TinyNet(FixedConfig(rank=2), 2.0).save(ckpt)
    assert sorted(contents(ckpt)) == ["policy.json", "weights.safetensors"]
    assert float(TinyNet(FixedConfig(rank=2)).load(ckpt).w[0]) == 2.0


# --- the Python API -------------------------------------------------------------------------------------


def test_api_takes_numpy_scalars_in_overrides():
    scenario = scenario_of(
        str(ROOT / "scenarios/quickstart.yaml"),
        {"train.local_steps": np.int64(1), "channel.snr_db": np.float32(3.5), "rounds": np.int32(2), "data.eval_full_final": np.bool_(False)},
    )
    assert (scenario.train.local_steps, scenario.channel.snr_db, scenario.rounds, scenario.data.eval_full_final) == (1, 3.5, 2, False)
    assert type(scenario.train.local_steps) is int


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (([1, 2],), {}, "scenario: got a list; allowed: a YAML path"),
        ((42,), {}, "scenario: got a int; allowed: a YAML path"),
        (("scenarios/quickstart.yaml", {"rounds": {1, 2}}), {}, "overrides['rounds']: cannot be a scenario value (a set)"),
        (("scenarios/quickstart.yaml", "rounds=3"), {}, "overrides: got a str; allowed: a dict"),
        (("scenarios/quickstart.yaml", [3]), {}, "overrides: 3 is a int, not a 'FIELD=VALUE' string"),
        (("scenarios/quickstart.yaml",), {"out": 7}, "out: got a int; allowed: a path"),
    ],
)
def test_api_wrong_argument_types_are_fedsim_errors(args, kwargs, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(FedsimError) as caught:
        fedsim.run(*args, **kwargs)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_api_sweep_workers_must_be_a_whole_number():
    with pytest.raises(FedsimError, match="allowed: a whole number, at least 1"):
        fedsim.sweep("any.yaml", workers="2")


# --- benchmark scripts ----------------------------------------------------------------------------------


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True, timeout=120)


def test_algorithm_table_without_fedavg_runs_is_one_line(tmp_path):
    run = tmp_path / "sweep" / "tiny-fedprox-0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "tiny", "seed": 0, "algorithm": {"name": "fedprox"}}))
    (run / "summary.json").write_text(json.dumps({"total_bytes_up": 1}))
    (run / "rounds.csv").write_text("round,accuracy,cum_bytes_up,eval_examples\n1,0.5,1,16\n")
    done = script("algorithm_table.py", str(tmp_path / "sweep"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "algorithm_table: error: task tiny: no fedavg runs to compare with; found fedprox (the sweep needs algorithm.name fedavg)"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "the following arguments are required: sweep_dir"),
        (("{tmp}",), "sweep.json: missing; expected the --out directory of `fedsim sweep`"),
        (("{tmp}/nowhere",), "nowhere: not a directory"),
    ],
)
def test_sweep_runtime_errors_are_one_line(tmp_path, args, message):
    done = script("sweep_runtime.py", *[a.format(tmp=tmp_path) for a in args])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert message in done.stderr.strip().splitlines()[-1]


def test_sweep_runtime_summarises_a_sweep_directory(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"engine": "inline", "points": [{"dir": "a"}, {"dir": "b"}]}))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "summary.json").write_text(json.dumps({"wall_s": 10.0, "final_accuracy": 0.5, "total_bytes_up": 2e6, "clients_dropped": 1}))
    (tmp_path / "a" / "timings.csv").write_text("round,wall_s\n1,4.0\n2,6.0\n")
    done = script("sweep_runtime.py", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "1/2 runs finished, engine inline" in done.stdout and "5.0 s/round" in done.stdout and "b" in done.stdout
