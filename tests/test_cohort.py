"""Cohort-batched training equals training the clients one after another."""

from __future__ import annotations

import csv

import numpy as np

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
