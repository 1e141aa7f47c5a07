"""Sweep files, grid expansion, hashing, resumable runs, collect and plot on tiny-random inline runs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.cli import main
from fedsim.sweeps import config_digest, load_sweep, point_states, run_sweep

TINY_BASE = """\
name: tiny
rounds: 2
engine: inline
threads: 1
model: {backbone: tiny-random}
data: {eval_samples: 16, eval_full_final: false, partition: {kind: dirichlet, alpha: 0.5}}
clients: {num_clients: 4, per_round: 2}
train: {local_steps: 1, batch_size: 8}
adapter: {max_rank: 4}
policy: {name: fixed, rank: 4}
"""


def write_sweep(tmp_path: Path, body: str, name: str = "sweep.yaml") -> Path:
    (tmp_path / "base.yaml").write_text(TINY_BASE)
    path = tmp_path / name
    path.write_text(body)
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def test_grid_expansion_is_the_cartesian_product_in_file_order(tmp_path):
    path = write_sweep(tmp_path, "base: base.yaml\ngrid:\n  channel.snr_db: [0, 10, 20]\n  train.lr: [0.001, 0.01]\nseeds: [1, 2]\n")
    sweep = load_sweep(path)
    assert len(sweep.points) == 12
    assert [p.values for p in sweep.points[:3]] == [
        {"channel.snr_db": 0, "train.lr": 0.001, "seed": 1},
        {"channel.snr_db": 0, "train.lr": 0.001, "seed": 2},
        {"channel.snr_db": 0, "train.lr": 0.01, "seed": 1},
    ]
    last = sweep.points[-1]
    assert (last.scenario.channel.snr_db, last.scenario.train.lr, last.scenario.seed) == (20, 0.01, 2)
    assert last.scenario.engine == "inline" and last.scenario.rounds == 2
    assert len({p.name for p in sweep.points}) == 12
    assert sweep.points[0].name.startswith("snr_db=0_lr=0.001_seed=1-")
    assert sweep.fields == ["channel.snr_db", "train.lr"]


def test_zip_fields_vary_together_and_multiply_with_grid(tmp_path):
    path = write_sweep(
        tmp_path,
        "base: base.yaml\ngrid:\n  channel.snr_db: [0, 10]\nzip:\n  data.partition.alpha: [0.1, 1.0, 100]\n  policy.rank: [1, 2, 4]\nseeds: [0]\n",
    )
    points = load_sweep(path).points
    assert len(points) == 2 * 3  # not 2 * 3 * 3
    pairs = {(p.scenario.channel.snr_db, p.scenario.data.partition.alpha, p.scenario.policy.rank) for p in points}
    assert pairs == {(s, a, r) for s in (0, 10) for a, r in ((0.1, 1), (1.0, 2), (100, 4))}


def test_set_applies_to_every_point_and_sweep_engine_defaults_to_inline(tmp_path):
    (tmp_path / "flower_base.yaml").write_text(TINY_BASE.replace("engine: inline", "engine: flower"))
    path = write_sweep(tmp_path, "base: flower_base.yaml\nset: {rounds: 3, clients.per_round: 3}\ngrid: {channel.snr_db: [0, 5]}\n")
    points = load_sweep(path).points
    assert all(p.scenario.rounds == 3 and p.scenario.clients.per_round == 3 for p in points)
    assert all(p.scenario.engine == "inline" for p in points)
    assert all(p.scenario.engine == "flower" for p in load_sweep(path, engine="flower").points)


def test_threads_split_among_workers_do_not_change_the_directory(tmp_path):
    path = write_sweep(tmp_path, "base: base.yaml\nset: {threads: null}\ngrid: {channel.snr_db: [0]}\n")
    one, two = load_sweep(path, workers=1).points[0], load_sweep(path, workers=64).points[0]
    assert two.scenario.threads == 1 and one.scenario.threads >= 1
    assert one.name == two.name


def test_directory_name_is_stable_across_processes(tmp_path):
    path = write_sweep(tmp_path, "base: base.yaml\ngrid:\n  channel.snr_db: [-5, 2.5]\n  data.partition.kind: [iid, dirichlet]\nseeds: [0, 7]\n")
    here = [p.name for p in load_sweep(path).points]
    code = "import sys; from fedsim.sweeps import load_sweep; print('\\n'.join(p.name for p in load_sweep(sys.argv[1], workers=2).points))"
    there = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}
    ).stdout.split()
    assert here == there
    # ...and the digest depends on the config, not on how the point was written.
    same = write_sweep(tmp_path, "base: base.yaml\nset: {channel.snr_db: -5.0, data.partition.kind: iid}\nseeds: [0]\n", "same.yaml")
    assert config_digest(load_sweep(same).points[0].scenario) == load_sweep(path).points[0].digest


def test_a_section_added_later_keeps_existing_run_directories_at_its_default():
    """`task:` came after sweeps existed: at its default it is left out of the hash, so the quickstart hashes as it
    did before (the value below is from a checkout without tasks), and resuming an old sweep skips its finished runs."""
    from fedsim.config import load_scenario

    quickstart = load_scenario("scenarios/quickstart.yaml")
    assert config_digest(quickstart) == "92997532ffa58903158d8f4e1a50750d5c70254b2196db15e9709995d592b21b"
    generative = load_scenario("scenarios/quickstart.yaml", ["task.name=causal-lm"])
    assert config_digest(generative) != config_digest(quickstart)


def test_a_reward_field_added_later_keeps_learned_policy_runs_and_is_filled_in_only_where_a_reward_exists():
    """`policy.reward.utility_weight` came after the policy comparison ran: at its default it is left out of the hash
    (the value below is from a checkout without it), and `later_defaults` gives it to old ppo/airllm runs only."""
    from fedsim.config import load_scenario
    from fedsim.ledger import later_defaults

    ppo = load_scenario("scenarios/quickstart.yaml", ["policy={name: ppo}"])
    assert ppo.policy.reward.utility_weight == "update"
    assert config_digest(ppo) == "dc75ea0f35c118b2a2c03a3123f07b0647890f6e8ec97cc6d8e53ac05d3e8726"
    shared = load_scenario("scenarios/quickstart.yaml", ["policy={name: ppo, reward: {utility_weight: aggregate-share}}"])
    assert config_digest(shared) != config_digest(ppo)
    assert later_defaults({"policy.name": "ppo", "policy.reward.lam": 1.0})["policy.reward.utility_weight"] == "update"
    assert later_defaults({"policy.name": "ppo", "policy.reward.lam": 1.0})["policy.full_share_at"] == 1.0  # ppo's, and only ppo's
    assert "policy.full_share_at" not in later_defaults({"policy.name": "fixed", "policy.rank": 4})
    assert "policy.reward.utility_weight" not in later_defaults({"policy.name": "fixed", "policy.rank": 4})
    assert later_defaults({"policy.name": "fixed"})["task.name"] == "classification"


@pytest.mark.parametrize(
    "body, expected",
    [
        ("base: base.yaml\ngrid: {channel.snrdb: [0, 1]}\n", "'channel.snrdb' is not a scenario field; did you mean 'channel.snr_db'?"),
        ("base: base.yaml\ngrid: {nosuch.thing: [0, 1]}\n", "'nosuch.thing' is not a scenario field"),
        ("base: base.yaml\ngrid: {channel.snr_db: []}\n", "grid.channel.snr_db: empty list"),
        ("base: base.yaml\ngrid: {channel.snr_db: 5}\n", "grid.channel.snr_db: expected a list of values"),
        ("base: base.yaml\ngrid: {channel.snr_db: [0]}\nseeds: []\n", "seeds: empty list"),
        ("base: base.yaml\ngrid: {policy.rank: [2, 9]}\nseeds: [0]\n", "grid point {policy.rank: 9, seed: 0}: policy.rank=9 exceeds adapter.max_rank=4"),
        ("base: base.yaml\ngrid: {rounds: [1, -2]}\n", "grid point {rounds: -2, seed: 0}: rounds = -2 is invalid"),
        ("base: base.yaml\nzip: {rounds: [1, 2], policy.rank: [1]}\n", "zipped lists must have equal lengths"),
        ("base: base.yaml\ngrdi: {rounds: [1]}\n", "unknown key 'grdi'"),
        ("grid: {rounds: [1]}\n", "'base' is missing"),
        ("base: nothere.yaml\ngrid: {rounds: [1]}\n", "no such scenario file 'nothere.yaml'"),
        ("base: base.yaml\ngrid: {seed: [1, 2]}\n", "vary the seed with 'seeds:'"),
        ("base: base.yaml\ngrid: {rounds: [1, 1]}\n", "resolve to the same scenario"),
    ],
)
def test_bad_sweep_file_is_one_line_exit_2_and_runs_nothing(tmp_path, capsys, body, expected):
    path = write_sweep(tmp_path, body)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "sweep", path, "--out", out)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert expected in err
    assert not out.exists()


def test_validation_covers_every_point_before_any_run(tmp_path, capsys):
    # The bad value is the last point: nothing may run before it is found.
    path = write_sweep(tmp_path, "base: base.yaml\ngrid: {clients.per_round: [1, 2, 3, 4, 5]}\n")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "sweep", path, "--out", out)
    assert code == 2 and "grid point {clients.per_round: 5, seed: 0}" in err
    assert not out.exists()


# ----------------------------------------------------------------------------- a real (tiny) sweep


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sweep")
    path = write_sweep(tmp_path, "base: base.yaml\ngrid:\n  channel.snr_db: [0, 20]\n  policy.rank: [2, 4]\nseeds: [0, 1]\n")
    sweep = load_sweep(path)
    out = tmp_path / "out"
    counts = run_sweep(sweep, out, workers=1, progress=False)
    return sweep, out, counts


def test_sweep_runs_every_point_and_rerun_skips_them(finished_sweep, capsys):
    sweep, out, counts = finished_sweep
    assert counts == {"done": 8, "ran": 8, "skipped": 0, "failed": 0, "total": 8}
    assert set(point_states(sweep, out).values()) == {"done"}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(p.name for p in sweep.points)
    code, stdout, _ = run_cli(capsys, "sweep", sweep.path, "--out", out, "--no-progress")
    assert code == 0 and "0 ran now, 8 already done" in stdout


def test_collect_writes_one_row_per_run_per_round_with_grid_columns(finished_sweep, capsys):
    sweep, out, _ = finished_sweep
    code, stdout, _ = run_cli(capsys, "collect", out)
    assert code == 0 and "16 rows from 8 runs" in stdout
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:4] == ["run_dir", "channel.snr_db", "policy.rank", "seed"]
    assert len(rows) == 16 and len({(r["run_dir"], r["round"]) for r in rows}) == 16
    for row in rows:
        point = next(p for p in sweep.points if p.name == row["run_dir"])
        assert float(row["channel.snr_db"]) == point.values["channel.snr_db"]
        assert int(row["policy.rank"]) == point.values["policy.rank"] and int(row["seed"]) == point.values["seed"]
        with open(out / row["run_dir"] / "rounds.csv", newline="") as fh:
            ledger = {r["round"]: r for r in csv.DictReader(fh)}
        assert row["cum_bytes_up"] == ledger[row["round"]]["cum_bytes_up"]
    # Rank 2 sends half the LoRA factors of rank 4 (the head is the same): fewer bytes, same SNR.
    by = {(r["policy.rank"], r["round"]): int(r["cum_bytes_up"]) for r in rows}
    assert by[("2", "2")] < by[("4", "2")]
    # Same bytes at every SNR, but a lower SNR means more airtime.
    airtime = {(float(r["channel.snr_db"]), r["policy.rank"]): float(r["cum_uplink_latency_s"]) for r in rows if r["round"] == "2"}
    assert airtime[(0.0, "4")] > airtime[(20.0, "4")]


def test_collect_writes_a_parquet_table_equal_to_the_csv_one(finished_sweep, capsys):
    """With pyarrow installed (a test extra), `fedsim collect` writes results.parquet beside results.csv: the same
    columns, rows and values, numbers as numbers."""
    import pandas as pd

    _, out, _ = finished_sweep
    code, _, err = run_cli(capsys, "collect", out)
    assert code == 0, err
    table, csv_table = pd.read_parquet(out / "results.parquet"), pd.read_csv(out / "results.csv")
    assert list(table.columns) == list(csv_table.columns) and len(table) == len(csv_table) == 16
    for column in ("policy.rank", "seed", "round", "cum_bytes_up"):
        assert pd.api.types.is_integer_dtype(table[column]), column
    assert pd.api.types.is_float_dtype(table["channel.snr_db"]) and pd.api.types.is_float_dtype(table["accuracy"])
    pd.testing.assert_frame_equal(table, csv_table, check_dtype=False, rtol=1e-9)


def test_collect_and_sweep_note_runs_made_by_different_code_or_cpus(finished_sweep, tmp_path, capsys):
    """Runs of one sweep made by one checkout on one machine: no note. Two of them re-made by another commit on another
    CPU (their summary.json's `environment` edited so): collect says so in one line and writes the results as before;
    `sweep --status` marks the two, and resuming the sweep keeps them and says so."""
    import shutil

    from fedsim.provenance import fedsim_commit

    sweep, out, _ = finished_sweep
    code, stdout, _ = run_cli(capsys, "collect", out)
    assert code == 0 and "note:" not in stdout
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for run_dir in sorted(p for p in copy.iterdir() if p.is_dir())[:2]:
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["environment"] |= {"fedsim_commit": "0123456789abcdef", "fedsim_dirty": False, "cpu": "Another CPU"}
        (run_dir / "summary.json").write_text(json.dumps(summary))
    code, stdout, _ = run_cli(capsys, "collect", copy)
    assert code == 0 and "16 rows from 8 runs" in stdout
    (note,) = [line for line in stdout.splitlines() if line.startswith("note:")]
    assert "these 8 runs were made by 2 fedsim commits (" in note and "0123456789 x2" in note and "2 models of CPU" in note
    if fedsim_commit()[0] is None:
        return  # not a git checkout: there is no commit to compare the runs' with
    code, stdout, _ = run_cli(capsys, "sweep", sweep.path, "--out", copy, "--status")
    assert code == 0 and stdout.count("(made by fedsim 0123456789)") == 2
    assert stdout.splitlines()[-1].startswith("note: 2 finished runs were made by another fedsim than this one (")
    code, stdout, _ = run_cli(capsys, "sweep", sweep.path, "--out", copy, "--no-progress")
    assert code == 0 and "0 ran now, 8 already done" in stdout and "note: 2 finished runs were made by another fedsim" in stdout
    code, stdout, _ = run_cli(capsys, "sweep", sweep.path, "--out", out, "--status")
    assert "made by fedsim" not in stdout and "note:" not in stdout


def test_a_sweep_refuses_a_directory_that_is_not_a_sweeps_and_removes_what_was_made_from_its_earlier_runs(finished_sweep, tmp_path, capsys):
    import shutil

    sweep, out, _ = finished_sweep
    run = tmp_path / "run"
    shutil.copytree(next(p for p in out.iterdir() if p.is_dir()), run)
    code, _, err = run_cli(capsys, "sweep", sweep.path, "--out", run, "--no-progress")
    assert code == 2 and err.count("\n") == 0 and "is a run's directory (it holds summary.json or rounds.csv), not a sweep's" in err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "sweep", sweep.path, "--out", mine, "--no-progress")
    assert code == 2 and "holds 1 entries (e.g. notes.txt) but no sweep.json" in err and not (mine / "sweep.json").exists()
    # A finished sweep's directory, with the tables and figures made from it, swept again with one seed fewer:
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert run_cli(capsys, "collect", copy)[0] == 0 and (copy / "results.csv").is_file()
    (copy / "plots").mkdir()
    (copy / "plots" / "accuracy_vs_bytes_up.png").write_bytes(b"figure")
    (copy / "plots" / "my_notes.txt").write_text("kept")
    fewer = write_sweep(tmp_path, "base: base.yaml\ngrid:\n  channel.snr_db: [0, 20]\n  policy.rank: [2, 4]\nseeds: [0]\n", "fewer.yaml")
    code, stdout, _ = run_cli(capsys, "sweep", fewer, "--out", copy, "--no-progress")
    assert code == 0 and "0 ran now, 4 already done" in stdout
    assert "note: removed results.csv, results.parquet, 1 figure in plots/" in stdout or "note: removed results.csv, 1 figure in plots/" in stdout
    assert not (copy / "results.csv").exists() and not (copy / "plots" / "accuracy_vs_bytes_up.png").exists()
    assert (copy / "plots" / "my_notes.txt").read_text() == "kept"
    code, stdout, _ = run_cli(capsys, "sweep", fewer, "--out", copy, "--no-progress")  # nothing changed: nothing removed
    assert code == 0 and "note: removed" not in stdout


def test_plot_writes_png_and_svg_figures(finished_sweep, tmp_path, capsys):
    _, out, _ = finished_sweep
    figures = tmp_path / "figs"
    code, stdout, err = run_cli(capsys, "plot", out, "--x", "latency", "--hue", "policy.rank", "--out", figures)
    assert code == 0, err
    names = sorted(p.name for p in figures.iterdir())
    assert names == sorted(f"{stem}.{ext}" for stem in ("accuracy_vs_latency", "rank_heatmap", "accuracy_at_budget") for ext in ("png", "svg"))
    assert all((figures / n).stat().st_size > 5000 for n in names)
    assert (figures / "accuracy_vs_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run_cli(capsys, "plot", out, "--hue", "channel.bandwidth_hz")
    assert code == 2 and "--hue 'channel.bandwidth_hz': not a field that varies" in err


def test_rank_matrix_averages_clients_per_layer_and_round(finished_sweep):
    from fedsim.collect import find_finished_runs
    from fedsim.plots import rank_matrix

    _, out, _ = finished_sweep
    run = next(r for r in find_finished_runs(out) if r.config["policy.rank"] == 2)
    matrix, rounds, layers = rank_matrix(run)
    assert rounds == [1, 2] and len(layers) == len(run.summary["layers"]) == matrix.shape[0]
    assert (matrix == 2).all()


def test_plot_and_collect_on_a_directory_without_finished_runs(tmp_path, capsys):
    (tmp_path / "killed-run").mkdir()
    (tmp_path / "killed-run" / "rounds.csv").write_text("round,accuracy\n1,0.5\n")
    for command in ("plot", "collect"):
        code, _, err = run_cli(capsys, command, tmp_path)
        assert code == 2 and "no finished runs" in err and len(err.splitlines()) == 1
    code, _, err = run_cli(capsys, "plot", tmp_path / "absent")
    assert code == 2 and "no such directory" in err


def test_unfinished_and_failed_runs_are_redone_and_recorded(tmp_path, capsys):
    path = write_sweep(tmp_path, "base: base.yaml\nset: {rounds: 1}\ngrid: {data.dataset: [banking77, missing_dir]}\n")
    sweep = load_sweep(path)
    out = tmp_path / "out"
    good, bad = sweep.points
    # A killed run: directory with a partial ledger and no summary.json.
    (out / good.name).mkdir(parents=True)
    (out / good.name / "rounds.csv").write_text("round,accuracy\n1,0.99\n")
    code, stdout, err = run_cli(capsys, "sweep", path, "--out", out, "--status")
    assert code == 0 and f"unfinished {good.name}" in stdout and f"pending    {bad.name}" in stdout
    # A point whose input is bad stops the sweep before any run starts (tests/test_collect_errors.py has a run
    # that fails after its checks, recorded in failed.json and retried).
    code, stdout, err = run_cli(capsys, "sweep", path, "--out", out, "--no-progress")
    assert code == 2 and "missing_dir" in err and len(err.splitlines()) == 1
    assert (out / good.name / "rounds.csv").read_text() == "round,accuracy\n1,0.99\n"  # nothing ran
    path = write_sweep(tmp_path, "base: base.yaml\nset: {rounds: 1}\ngrid: {data.dataset: [banking77]}\n")
    code, stdout, _ = run_cli(capsys, "sweep", path, "--out", out, "--no-progress")
    assert code == 0
    rounds = (out / good.name / "rounds.csv").read_text()
    assert "0.99" not in rounds and rounds.count("\n") == 2  # redone from scratch: header + 1 round
    code, stdout, _ = run_cli(capsys, "sweep", path, "--out", out, "--status")
    assert f"done       {good.name}" in stdout


def test_zipped_fields_share_one_plot_axis_and_nothing_is_averaged_away():
    from fedsim.plots import _choose_roles
    from fedsim.types import FedsimError

    axes = [["data.partition.alpha"], ["channel.snr_spread_db", "channel.compute.speed_sigma"], ["policy.name"]]
    hue, facet = _choose_roles(axes, None, None)
    assert facet == ["data.partition.alpha"]  # policy.name is the default hue; the next axis becomes the panels
    assert hue == ["policy.name", "channel.snr_spread_db", "channel.compute.speed_sigma"]
    hue, facet = _choose_roles(axes, "data.partition.alpha", "channel.compute.speed_sigma")
    assert facet == ["channel.snr_spread_db", "channel.compute.speed_sigma"] and hue == ["data.partition.alpha", "policy.name"]
    with pytest.raises(FedsimError, match="vary together"):
        _choose_roles(axes, "channel.snr_spread_db", "channel.compute.speed_sigma")


def test_collect_reads_only_the_current_sweeps_runs(finished_sweep, tmp_path):
    import shutil

    from fedsim.collect import results_table

    sweep, out, _ = finished_sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # A run left over from an earlier version of the sweep file: on disk, finished, not in sweep.json.
    shutil.copytree(copy / sweep.points[0].name, copy / "rounds=9_seed=0-0000000000")
    _, rows, runs, fields = results_table(copy)
    assert len(runs) == 8 and fields == ["channel.snr_db", "policy.rank"]
    (copy / "sweep.json").unlink()
    assert len(results_table(copy)[2]) == 9  # outside a sweep, every finished run counts


def test_retraining_a_checkpoint_in_place_gives_new_run_directories(tmp_path, monkeypatch):
    from policies.airllm import AirLlmConfig, AirLlmPolicy

    monkeypatch.chdir(tmp_path)
    small = dict(coarse_dim=2, hidden=8, denoiser_hidden=8, sampling_steps=2)
    AirLlmPolicy(AirLlmConfig(seed=0, **small)).save(tmp_path / "ckpt")
    path = write_sweep(tmp_path, "base: base.yaml\nset: {policy: {name: airllm, checkpoint: ckpt}}\ngrid: {channel.snr_db: [0]}\n")
    before = load_sweep(path).points[0].name
    assert load_sweep(path).points[0].name == before
    AirLlmPolicy(AirLlmConfig(seed=1, **small)).save(tmp_path / "ckpt")  # retrained into the same directory
    assert load_sweep(path).points[0].name != before


SHIPPED_SWEEPS = sorted(
    p for p in (Path(__file__).resolve().parent.parent / "scenarios").glob("*.yaml") if "\ngrid:" in p.read_text() or "\nzip:" in p.read_text()
)


@pytest.mark.parametrize("path", SHIPPED_SWEEPS, ids=lambda p: p.name)
def test_every_shipped_sweep_file_validates_every_grid_point(path):
    """A sweep file in scenarios/ names a scenario, not another sweep, as its base, and every point is a valid scenario."""
    assert len(load_sweep(path).points) >= 2
