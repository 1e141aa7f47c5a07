"""Faults inside clients are never silent: a crash stops the run (or is logged when tolerated),
and a non-finite update is dropped before it can reach the global adapter."""

from __future__ import annotations

import csv

from fedsim.cli import main

TINY = [
    "--set", "model.backbone=tiny-random", "--set", "engine=inline", "--set", "rounds=2",
    "--set", "data.eval_samples=32", "--set", "data.eval_full_final=false",
    "--set", "clients.num_clients=6", "--set", "clients.per_round=3", "--set", "train.local_steps=2", "--no-progress",
]  # fmt: skip
CRASH = ["--set", "train.head_lr=1e38"]  # finite, so valid; Adam then overflows inside every client


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_crashing_client_stops_the_run_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "scenarios/quickstart.yaml", *TINY, *CRASH, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "round 1: client" in err and "RuntimeError" in err and "tolerate_client_errors" in err
    assert not (out / "summary.json").exists()
    # The real ClientApp's traceback reaches the run directory (it was lost: the app's own guard caught it first).
    log = (out / "client_errors.log").read_text()
    assert "round 1, client" in log and "Traceback (most recent call last)" in log and "RuntimeError" in log


def test_tolerated_client_errors_are_logged_and_a_run_that_aggregated_nothing_fails(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "scenarios/quickstart.yaml", *TINY, *CRASH, "--set", "tolerate_client_errors=true", "--out", str(out)]) == 2
    assert "no update was aggregated" in capsys.readouterr().err
    clients = rows(out / "clients.csv")
    assert clients and all(c["drop_reason"] == "client-error" and "RuntimeError" in c["error"] for c in clients)
    assert all(r["updates_aggregated"] == "0" for r in rows(out / "rounds.csv"))
    assert not (out / "summary.json").exists()


def test_non_finite_updates_are_dropped_and_the_global_adapter_kept(tmp_path, capsys):
    out = tmp_path / "run"
    huge = ["--set", "rounds=3", "--set", "train.lr=1e6", "--set", "train.head_lr=1e6"]
    assert main(["run", "scenarios/quickstart.yaml", *TINY, *huge, "--out", str(out)]) == 0
    capsys.readouterr()
    clients, rounds = rows(out / "clients.csv"), rows(out / "rounds.csv")
    poisoned = [c for c in clients if c["drop_reason"] == "non-finite"]
    assert poisoned and all(c["delivered"] == "0" for c in poisoned)
    # Sent, so charged like any upload at the same ranks (fixed rank 8 here): bytes and parameters alike.
    assert {(c["params_up"], c["bytes_up"]) for c in clients} == {(clients[0]["params_up"], clients[0]["bytes_up"])} and int(clients[0]["params_up"]) > 0
    empty = [r for r in rounds if r["updates_aggregated"] == "0"]
    assert empty, "this lr makes every upload non-finite after round 1"
    for r in empty:  # nothing aggregated: the global adapter, and so its evaluation, is unchanged
        previous = rounds[int(r["round"]) - 2]
        assert r["loss"] == previous["loss"] and r["accuracy"] == previous["accuracy"]
    assert all(float(r["loss"]) < float("inf") for r in rounds)


def test_a_run_whose_every_update_is_non_finite_is_not_finished(tmp_path, capsys):
    out = tmp_path / "run"
    huge = ["--set", "train.lr=1e20", "--set", "train.head_lr=1e20"]
    assert main(["run", "scenarios/quickstart.yaml", *TINY, *huge, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no update was aggregated" in err and "non-finite" in err
    assert {c["drop_reason"] for c in rows(out / "clients.csv")} == {"non-finite"}
    assert not (out / "summary.json").exists()


def test_a_channel_that_loses_every_update_is_a_result_not_a_failure(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "scenarios/quickstart.yaml", *TINY, "--set", "channel.deadline_s=1e-6", "--out", str(out)]) == 0
    capsys.readouterr()
    assert {c["drop_reason"] for c in rows(out / "clients.csv")} == {"deadline"}
    assert all(r["updates_aggregated"] == "0" for r in rows(out / "rounds.csv"))
    assert (out / "summary.json").exists()
