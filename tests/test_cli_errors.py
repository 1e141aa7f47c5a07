"""Bad input: one clear line on stderr, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import pytest

from fedsim.cli import main

QUICKSTART = "scenarios/quickstart.yaml"


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err.strip()


def write(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, overrides, expected",
    [
        ("rounds: 2\nadapter: {max_rank: 8, colour: red}\n", [], "unknown key 'adapter.colour'; allowed: alpha, kind, layers, max_rank, target_modules"),
        ("policy: {name: fixed, rnak: 2}\n", [], "unknown key 'policy.rnak'; did you mean 'policy.rank'? allowed: name, rank, ranks"),
        ("policy: {name: fixed, rank: -1}\n", [], "policy.rank = -1 is invalid"),
        ("policy: {name: fixed, rank: 9}\nadapter: {max_rank: 8}\n", [], "policy.rank=9 exceeds adapter.max_rank=8"),
        ("clients: {num_clients: 4, per_round: 5}\n", [], "clients.per_round=5 exceeds clients.num_clients=4"),
        ("rounds: [1\n", [], "invalid YAML at line"),
        ("rounds: 2\n", ["adapter.max_rank=-3"], "adapter.max_rank = -3 is invalid"),
        ("rounds: 2\n", ["nosuch.field=1"], "unknown key 'nosuch'"),
        ("rounds: 2\n", ["rounds"], "expected FIELD=VALUE"),
        ("model: {backbone: no-such-model-xyz}\n", [], "model.backbone='no-such-model-xyz'"),
        ("rounds: 2\n", ["policy.rank=2"], "policy.name is missing: a policy section (or --set policy.FIELD) must name its kind"),
        ("rounds: 2\n", ["task.name=nosuch"], "task.name='nosuch' is not registered; allowed: classification, causal-lm"),
        ("rounds: 2\n", ["policy={name: nosuch}"], "policy.name='nosuch' is not registered; allowed: fixed, channel-greedy"),
        # validate calls these valid only if a run then does not fail on them at round 1
        pytest.param(
            "rounds: 2\n",
            ["device=cuda"],
            "device=cuda: no CUDA device is visible",
            marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is visible"),
        ),
        ("model: {backbone: tiny-random}\n", ["policy={name: fixed, ranks: [8, 8]}"], "policy.ranks has 2 entries, but the adapter has 4 adapted layers"),
        (
            "model: {backbone: tiny-random}\n",
            ["policy={name: ppo, checkpoint: policies/checkpoints/ppo}"],
            "trained for 12 adapted layers, the scenario's adapter has 4",
        ),
        (
            "rounds: 2\n",
            ["policy={name: airllm, checkpoint: policies/checkpoints/airllm, spread: 2}"],
            "policy.spread=2 differs from 1, which checkpoint policies/checkpoints/airllm was trained with",
        ),
    ],
)
def test_bad_scenario_is_one_line_exit_2(tmp_path, capsys, text, overrides, expected):
    path = write(tmp_path, text)
    sets = [arg for o in overrides for arg in ("--set", o)]
    out = tmp_path / "run"
    code, err = run_cli(capsys, "run", path, *sets, "--out", str(out), "--no-progress")
    assert code == 2
    assert expected in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists(), "a rejected scenario must not leave a run directory"


def test_missing_file(capsys, tmp_path):
    code, err = run_cli(capsys, "validate", str(tmp_path / "nope.yaml"))
    assert code == 2 and "no such file" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["run", "scenarios/snr_sweep.yaml"],
            "unknown key 'base': this is a sweep file (base, grid, zip, seeds); run it with `fedsim sweep scenarios/snr_sweep.yaml`",
        ),
        (["sweep", QUICKSTART], f"unknown key 'adapter': this is a scenario, not a sweep file; run it with `fedsim run {QUICKSTART}`"),
        (["validate", "scenarios"], "scenarios: is a directory; expected a YAML file"),
        (
            ["validate", QUICKSTART, "--set", "channel.preset=harsh"],
            "--set channel.preset=harsh keeps the scenario's channel fields, and its kind, snr_db would win over those of preset 'harsh'; "
            "replace the whole section instead: --set 'channel={preset: harsh}'",
        ),
    ],
)
def test_a_file_of_the_wrong_kind_or_a_preset_the_file_overrides_is_named_in_one_line(capsys, argv, expected):
    code, err = run_cli(capsys, *argv)
    assert code == 2 and expected in err and len(err.splitlines()) == 1, err
    assert main(["validate", QUICKSTART, "--set", "channel={preset: harsh}"]) == 0  # the whole section: the preset's fields
    capsys.readouterr()


def test_validate_prints_resolved_scenario(capsys):
    code = main(["validate", QUICKSTART, "--set", "adapter.max_rank=4", "--set", "policy.rank=4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "max_rank: 4" in out and "eval_full_final: true" in out


def test_out_dir_with_finished_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    code, err = run_cli(capsys, "run", QUICKSTART, "--out", str(out), "--no-progress")
    assert code == 2 and "already holds a finished run" in err


def test_a_backbone_directory_without_weights_is_refused_by_validate(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "bert", "hidden_size": 32}')
    code, err = run_cli(capsys, "validate", QUICKSTART, "--set", f"model.backbone={tmp_path / 'model'}")
    assert code == 2 and "the directory has no weights" in err and len(err.splitlines()) == 1


def test_an_option_named_like_a_scenario_field_says_how_fields_are_set_and_version_prints(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", QUICKSTART, "--rounds", "2"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unrecognized arguments: --rounds 2; scenario fields are set with --set rounds=VALUE" in err
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("fedsim ")
