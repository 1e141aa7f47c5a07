"""Reading finished runs and sweeps fails loudly and writes nothing: corrupt files in a run or sweep directory,
a corrupt rounds.csv, a file in the way of `sweep --out`, a grid point whose data does not exist, and bad `plot` /
`collect` arguments are each one line on stderr and exit 2, with no traceback and nothing (half-)written.

One finished 1-round tiny-random sweep (one point) is built per module; each test damages a copy of it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedsim.cli import main
from fedsim.types import FedsimError

BASE = """\
name: tiny
rounds: 1
engine: inline
threads: 1
model: {backbone: tiny-random}
data: {eval_samples: 16, eval_full_final: false, validation_samples: 0}
clients: {num_clients: 4, per_round: 2}
train: {local_steps: 1, batch_size: 8}
adapter: {max_rank: 4}
policy: {name: fixed, rank: 4}
"""


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err.strip(), captured.out


def assert_one_line(code, err, *expected):
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err


def write_sweep(root: Path, body: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "base.yaml").write_text(BASE)
    path = root / "sweep.yaml"
    path.write_text("base: base.yaml\n" + body)
    return path


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes: what a failing command must leave as it was."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    """A sweep directory holding one finished 1-round run (and sweep.json)."""
    root = tmp_path_factory.mktemp("collect_errors")
    path = write_sweep(root, "grid: {channel.snr_db: [0]}\nseeds: [0]\n")
    out = root / "out"
    assert main(["sweep", str(path), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture
def sweep_copy(finished_sweep, tmp_path) -> tuple[Path, Path]:
    """(a copy of the finished sweep directory, its run directory)."""
    copy = tmp_path / "sweep"
    shutil.copytree(finished_sweep, copy)
    (run_dir,) = [p for p in copy.iterdir() if p.is_dir()]
    return copy, run_dir


def commands(root: Path, figures: Path):
    return [("collect", root), ("plot", root, "--out", figures)]


# --- 1. corrupt JSON / YAML in a run or sweep directory ----------------------------------------------------


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("summary.json", '{"rounds": 8,', "summary.json: not valid JSON"),
        ("summary.json", "[1, 2]", "summary.json: holds a JSON list; expected a JSON object"),
        ("summary.json", '{"rounds": "eight"}', "summary.json: rounds = 'eight'; expected a whole number"),
        ("config.yaml", "a: [1", "config.yaml: not valid YAML"),
        ("config.yaml", "- 1\n- 2\n", "config.yaml: holds a YAML list"),
        ("sweep.json", "{", "sweep.json: not valid JSON"),
        ("sweep.json", "[1,2]", "sweep.json: holds a JSON list; expected a JSON object"),
        ("sweep.json", '{"points": [1, 2]}', "sweep.json: 'points' is not a list"),
        ("sweep.json", '{"points": [], "fields": "snr"}', "sweep.json: 'fields' is not a list of field names"),
        ("summary.json", b"\xff\xfe{}", "summary.json: not UTF-8 text"),
    ],
)
def test_a_corrupt_json_or_yaml_file_is_one_line_naming_it_and_nothing_is_written(sweep_copy, tmp_path, capsys, name, text, expected):
    root, run_dir = sweep_copy
    target = root / name if name == "sweep.json" else run_dir / name
    if isinstance(text, bytes):
        target.write_bytes(text)
    else:
        target.write_text(text)
    before = tree(root)
    figures = tmp_path / "figures"
    for argv in commands(root, figures):
        code, err, _ = run_cli(capsys, *argv)
        assert_one_line(code, err, str(target) + expected[len(name) :])
        assert tree(root) == before and not figures.exists()
    if name != "sweep.json":  # what fedsim.api.load_run-style readers call for one run directory
        from fedsim.collect import read_finished_run

        with pytest.raises(FedsimError, match="not valid|holds a|rounds = |not UTF-8"):
            read_finished_run(run_dir)


def test_a_finished_run_without_its_ledger_is_one_line(sweep_copy, capsys):
    root, run_dir = sweep_copy
    (run_dir / "rounds.csv").unlink()
    code, err, _ = run_cli(capsys, "collect", root)
    assert_one_line(code, err, f"{run_dir / 'rounds.csv'}: missing")
    assert not (root / "results.csv").exists()


# --- 2. a corrupt rounds.csv is refused, not collected with shifted or missing values --------------------


def _damage_rounds(text: str, how: str) -> str:
    header, row = text.splitlines()
    cells = row.split(",")
    columns = header.split(",")
    if how == "truncated mid-row":
        return text[: len(header) + 1 + len(row) // 2]  # a killed copy: no line end, half the cells
    if how == "truncated row with a line end":
        return header + "\n" + ",".join(cells[: len(cells) // 2]) + "\n"
    if how == "extra cell":
        return header + "\n" + row + ",7\n"
    if how == "garbage in accuracy":
        cells[columns.index("accuracy")] = "garbage"
    if how == "garbage in cum_bytes_up":
        cells[columns.index("cum_bytes_up")] = "12x4"
    if how == "empty bytes_up":
        cells[columns.index("bytes_up")] = ""
    if how == "no rows":
        return header + "\n"
    if how == "a repeated row":
        return header + "\n" + row + "\n" + row + "\n"
    if how == "round 2 in place of round 1":
        cells[0] = "2"
    return header + "\n" + ",".join(cells) + "\n"


@pytest.mark.parametrize(
    "how, expected",
    [
        ("truncated mid-row", "line 2: the last line has no line end"),
        ("truncated row with a line end", "line 2: a row with another number of fields"),
        ("extra cell", "line 2: a row with another number of fields"),
        ("garbage in accuracy", "line 2: accuracy = 'garbage' is not a number"),
        ("garbage in cum_bytes_up", "line 2: cum_bytes_up = '12x4' is not a whole number"),
        ("empty bytes_up", "line 2: bytes_up = '' is not a whole number"),
        ("no rows", "a header and no round rows"),
        ("a repeated row", "line 3: round 1 where round 2 belongs"),
        ("round 2 in place of round 1", "line 2: round 2 where round 1 belongs"),
    ],
)
def test_a_corrupt_rounds_csv_is_one_line_naming_file_and_line(sweep_copy, tmp_path, capsys, how, expected):
    root, run_dir = sweep_copy
    ledger = run_dir / "rounds.csv"
    ledger.write_text(_damage_rounds(ledger.read_text(), how))
    before = tree(root)
    figures = tmp_path / "figures"
    for argv in commands(root, figures):
        code, err, _ = run_cli(capsys, *argv)
        assert_one_line(code, err, f"{ledger}", expected)
        assert tree(root) == before and not figures.exists()


def test_fewer_rows_than_summary_rounds_is_one_line(sweep_copy, capsys):
    root, run_dir = sweep_copy
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "rounds": 2}))  # the ledger lost its last row
    code, err, _ = run_cli(capsys, "collect", root)
    assert_one_line(code, err, f"{run_dir / 'rounds.csv'}: 1 round rows, but summary.json says the run had 2 rounds")
    assert not (root / "results.csv").exists()


def test_what_a_normal_ledger_writes_is_accepted(sweep_copy, capsys):
    """nan where a run diverged (or no update trained) and empty cells in an extra column are what a real ledger
    holds: still collected, as the values they are."""
    root, run_dir = sweep_copy
    ledger = run_dir / "rounds.csv"
    header, row = ledger.read_text().splitlines()
    columns, cells = header.split(","), row.split(",")
    cells[columns.index("accuracy")] = "nan"
    cells[columns.index("train_loss")] = "nan"
    ledger.write_text(header + ",clients_online\n" + ",".join(cells) + ",\n")
    code, err, out = run_cli(capsys, "collect", root)
    assert code == 0, err
    assert "1 row from 1 run" in out
    import csv

    with open(root / "results.csv", newline="") as fh:
        (result,) = list(csv.DictReader(fh))
    assert result["accuracy"] == "nan" and result["clients_online"] == ""
    assert result["cum_bytes_up"] == cells[columns.index("cum_bytes_up")]


# --- 3. sweep --out naming a file ------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--dry-run"], ["--status"]])
def test_sweep_out_naming_a_file_is_one_line(tmp_path, capsys, extra):
    path = write_sweep(tmp_path, "grid: {channel.snr_db: [0, 5]}\n")
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep me\n")
    code, err, _ = run_cli(capsys, "sweep", path, "--out", blocker, *extra)
    assert_one_line(code, err, f"--out {blocker}: is a file, not a directory")
    assert blocker.read_text() == "keep me\n"
    code, err, _ = run_cli(capsys, "sweep", path, "--out", blocker / "sub", *extra)
    assert_one_line(code, err, f"{blocker} is a file, not a directory")


# --- 4. every grid point passes the run pre-checks before anything runs ----------------------------------


@pytest.mark.parametrize("extra", [["--dry-run"], ["--no-progress"]])
def test_a_point_whose_data_does_not_exist_fails_before_any_run(tmp_path, capsys, extra):
    # The bad point is the last: no run may start before it is found.
    path = write_sweep(tmp_path, "grid: {data.dataset: [banking77, /nonexistent]}\nseeds: [0, 1]\n")
    out = tmp_path / "out"
    code, err, stdout = run_cli(capsys, "sweep", path, "--out", out, *extra)
    assert_one_line(code, err, f"{path}: grid point {{data.dataset: /nonexistent, seed: 0}}", "/nonexistent")
    assert "all valid" not in stdout
    assert not out.exists()


def test_points_that_differ_only_in_seed_are_prechecked_once(tmp_path, monkeypatch):
    from fedsim import runner
    from fedsim.sweeps import load_sweep, preflight_points

    checked = []
    monkeypatch.setattr(runner, "preflight", lambda scenario: checked.append((scenario.channel.snr_db, scenario.seed)))
    sweep = load_sweep(write_sweep(tmp_path, "grid: {channel.snr_db: [0, 5, 10]}\nseeds: [0, 1, 2, 3]\n"))
    assert preflight_points(sweep) == 3
    assert checked == [(0, 0), (5, 0), (10, 0)]


def test_a_run_that_fails_after_the_prechecks_is_recorded_and_retried(tmp_path, capsys, monkeypatch):
    """Input errors no longer reach failed.json (they stop the sweep first); a fault during a run still does."""
    from fedsim import sweeps

    path = write_sweep(tmp_path, "grid: {channel.snr_db: [0, 5]}\n")
    out = tmp_path / "out"
    real = sweeps._run_point

    def crash_at_snr_5(scenario_json, run_dir):
        if scenario_json["channel"]["snr_db"] == 5:
            return run_dir, 0.0, None, "RuntimeError: the device fell over\ntraceback"
        return real(scenario_json, run_dir)

    monkeypatch.setattr(sweeps, "_run_point", crash_at_snr_5)
    code, _, stdout = run_cli(capsys, "sweep", path, "--out", out, "--no-progress")
    assert code == 1 and "1 failed" in stdout
    (bad,) = json.loads((out / "failed.json").read_text())
    assert bad.startswith("snr_db=5")
    monkeypatch.setattr(sweeps, "_run_point", real)
    code, _, stdout = run_cli(capsys, "sweep", path, "--out", out, "--no-progress")
    assert code == 0 and "1 ran now, 1 already done" in stdout and not (out / "failed.json").exists()


def test_a_resumed_sweep_prechecks_only_the_points_still_to_run(finished_sweep, tmp_path, monkeypatch):
    from fedsim import runner
    from fedsim.sweeps import load_sweep, run_sweep

    copy = tmp_path / "out"
    shutil.copytree(finished_sweep, copy)
    checked = []
    monkeypatch.setattr(runner, "preflight", lambda scenario: checked.append(scenario))
    sweep = load_sweep(write_sweep(tmp_path, "grid: {channel.snr_db: [0]}\nseeds: [0]\n"))
    assert run_sweep(sweep, copy, progress=False)["skipped"] == 1
    assert checked == []


# --- 5. nothing written before a failure is reported ----------------------------------------------------


def test_collect_of_a_directory_without_finished_runs_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err, _ = run_cli(capsys, "collect", empty)
    assert_one_line(code, err, "no finished runs")
    assert list(empty.iterdir()) == []
    (empty / "results.csv").write_text("an earlier table\n")
    code, err, _ = run_cli(capsys, "collect", empty)
    assert_one_line(code, err, "no finished runs")
    assert (empty / "results.csv").read_text() == "an earlier table\n"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--run", "nosuch"], "--run 'nosuch': no finished run of that name"),
        (["--budget-mb", "-1"], "--budget-mb -1: not an upload budget; allowed: a positive number of MB"),
        (["--budget-mb", "nan"], "--budget-mb nan: not an upload budget"),
        (["--budget-mb", "1e-9"], "no run uploads that little in its first round; allowed: at least"),
        (["--hue", "channel.bandwidth_hz"], "--hue 'channel.bandwidth_hz': not a field that varies"),
    ],
)
def test_a_bad_plot_argument_writes_no_figure_and_no_results(sweep_copy, tmp_path, capsys, args, expected):
    root, _ = sweep_copy
    before = tree(root)
    figures = tmp_path / "figures" / "new"
    code, err, _ = run_cli(capsys, "plot", root, "--out", figures, *args)
    assert_one_line(code, err, expected)
    assert not (tmp_path / "figures").exists()
    assert tree(root) == before  # no results.csv, no root/plots
    # An existing figure directory keeps what it held.
    figures.mkdir(parents=True)
    (figures / "rank_heatmap.png").write_bytes(b"an earlier figure")
    code, err, _ = run_cli(capsys, "plot", root, "--out", figures, *args)
    assert_one_line(code, err, expected)
    assert tree(figures) == {"rank_heatmap.png": b"an earlier figure"}


def test_a_corrupt_clients_csv_fails_the_plot_before_any_figure(sweep_copy, tmp_path, capsys):
    root, run_dir = sweep_copy
    clients = run_dir / "clients.csv"
    header = clients.read_text().splitlines()[0]
    clients.write_text(header + "\n1,0,4 4 x\n")
    before = tree(root)
    code, err, _ = run_cli(capsys, "plot", root, "--out", tmp_path / "figures")
    assert_one_line(code, err, f"{clients}, line 2")
    assert tree(root) == before and not (tmp_path / "figures").exists()


def test_plot_and_collect_write_complete_files_and_no_temporaries(sweep_copy, tmp_path, capsys):
    root, _ = sweep_copy
    figures = tmp_path / "figures"
    code, err, _ = run_cli(capsys, "plot", root, "--out", figures)
    assert code == 0, err
    assert sorted(p.name for p in figures.iterdir()) == sorted(
        f"{stem}.{ext}" for stem in ("accuracy_vs_bytes_up", "rank_heatmap", "accuracy_at_budget") for ext in ("png", "svg")
    )
    assert (root / "results.csv").read_text().count("\n") == 2  # header + the run's one round
    code, err, _ = run_cli(capsys, "collect", root)
    assert code == 0, err
    assert not [p for p in root.rglob(".*") if p.name != ".sweep.lock"]
