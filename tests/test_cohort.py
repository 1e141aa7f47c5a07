"""Cohort-batched training equals training the clients one after another."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from fedsim.adapter_state import truncate
from fedsim.cohort import cohort_train
from fedsim.runner import run_scenario
from fedsim.runtime import get_runtime
from fedsim.training import local_train


def _payloads(runtime, rank_rows):
    return [truncate(runtime.initial_state, ranks) for ranks in rank_rows]


def test_cohort_equals_sequential_clients_with_different_ranks(tiny):
    # min_examples 4 < batch 16 lets a small client's batches be shorter than the others'.
    runtime = get_runtime(tiny(data={"partition": {"kind": "quantity_skew", "alpha": 0.3, "min_examples": 4}}, train={"batch_size": 16}))
    n = runtime.n_layers
    rank_rows = [[8] * n, [2] * n, [0] + [4] * (n - 1)]
    clients = [int(np.argmin([len(p) for p in runtime.partitions])), 1, 2]
    assert len(runtime.partitions[clients[0]]) < runtime.scenario.train.batch_size
    together = cohort_train(runtime, _payloads(runtime, rank_rows), clients, server_round=3)
    for payload, cid, (upload, metrics) in zip(_payloads(runtime, rank_rows), clients, together):
        alone, alone_metrics = local_train(runtime, payload, cid, server_round=3)
        assert upload.keys() == alone.keys()
        for key in upload:
            assert upload[key].shape == alone[key].shape
            np.testing.assert_allclose(upload[key], alone[key], rtol=1e-4, atol=2e-5, err_msg=key)
        assert abs(metrics["train-loss"] - alone_metrics["train-loss"]) < 1e-5
        assert metrics["tokens"] == alone_metrics["tokens"]


def test_cohort_engine_run_matches_per_client_run(tmp_path, tiny):
    run_scenario(tiny(train={"engine": "cohort"}), tmp_path / "cohort", progress=False)
    run_scenario(tiny(), tmp_path / "per-client", progress=False)
    rows = [list(csv.DictReader(open(tmp_path / d / "clients.csv"))) for d in ("cohort", "per-client")]
    assert len(rows[0]) == len(rows[1])
    for a, b in zip(*rows):
        assert (a["client"], a["ranks"], a["bytes_up"], a["delivered"]) == (b["client"], b["ranks"], b["bytes_up"], b["delivered"])
        assert abs(float(a["train_loss"]) - float(b["train_loss"])) < 1e-4


def test_length_chunks_cover_every_row_once_within_the_token_budget(tiny):
    from fedsim.cohort import length_chunks

    lengths = get_runtime(tiny()).train.lengths[:160]
    chunks = length_chunks(lengths, max_padded_tokens=512)
    rows = np.concatenate(chunks)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    assert all(len(c) * lengths[c].max() <= 512 or len(c) == 1 for c in chunks)
    padded = sum(len(c) * int(lengths[c].max()) for c in chunks)
    one_pass = len(lengths) * int(lengths.max())
    assert padded < 0.75 * one_pass  # sorting and cutting removes most of the padding of one wide pass
    again = length_chunks(lengths, max_padded_tokens=512)
    assert len(again) == len(chunks) and all((a == b).all() for a, b in zip(again, chunks))  # deterministic


def test_cohort_size_cuts_each_round_into_calls_of_at_most_that_many_clients_in_selection_order(tmp_path, tiny, monkeypatch):
    import fedsim.client_app

    calls: list[list[int]] = []
    real = fedsim.client_app.cohort_train

    def watched(runtime, payloads, client_ids, server_round):
        calls.append(list(client_ids))
        return real(runtime, payloads, client_ids, server_round)

    monkeypatch.setattr(fedsim.client_app, "cohort_train", watched)
    clients = {"num_clients": 6, "per_round": 5}
    run_scenario(tiny(clients=clients, train={"engine": "cohort", "cohort_size": 2}), tmp_path / "cut", progress=False)
    cut, calls[:] = list(calls), []
    run_scenario(tiny(clients=clients, train={"engine": "cohort"}), tmp_path / "whole", progress=False)
    assert [len(c) for c in calls] == [5, 5]
    assert [len(c) for c in cut] == [2, 2, 1] * 2
    assert [sum(cut[3 * r : 3 * r + 3], []) for r in range(2)] == calls  # the same clients, in the same order, cut in cohorts
    rows = [list(csv.DictReader(open(tmp_path / d / "clients.csv"))) for d in ("cut", "whole")]
    assert len(rows[0]) == len(rows[1]) == 10
    for a, b in zip(*rows):
        assert (a["client"], a["ranks"], a["bytes_up"], a["delivered"]) == (b["client"], b["ranks"], b["bytes_up"], b["delivered"])
        assert abs(float(a["train_loss"]) - float(b["train_loss"])) < 1e-4
    for a, b in zip(*[list(csv.DictReader(open(tmp_path / d / "rounds.csv"))) for d in ("cut", "whole")]):
        assert abs(float(a["accuracy"]) - float(b["accuracy"])) <= 1 / int(a["eval_examples"])  # at most one example flips


def test_cohort_size_without_the_cohort_engine_is_refused(tiny):
    from fedsim.types import FedsimError

    with pytest.raises(FedsimError, match=r"train.cohort_size=2 needs train.engine=cohort .*; allowed: --set train.engine=cohort"):
        tiny(train={"cohort_size": 2})
    with pytest.raises(FedsimError, match="cohort_size"):
        tiny(train={"engine": "cohort", "cohort_size": 0})
