from __future__ import annotations

import numpy as np
import pytest

from fedsim.config import DataConfig, PartitionConfig
from fedsim.data import load_corpus, partition, tokenize
from fedsim.hub import load_tokenizer
from fedsim.types import FedsimError


@pytest.fixture(scope="module")
def banking():
    return load_corpus(DataConfig())


def test_banking77_embedded(banking):
    assert len(banking.train.texts) == 10003 and len(banking.test.texts) == 3080
    assert len(banking.label_names) == 77
    assert np.bincount(banking.test.labels).tolist() == [40] * 77


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "quantity_skew"])
def test_partitions_are_disjoint_seeded_and_nonempty(banking, kind):
    cfg = PartitionConfig(kind=kind, alpha=0.3, min_examples=8)
    parts = partition(banking.train.labels, 20, cfg, seed=1)
    again = partition(banking.train.labels, 20, cfg, seed=1)
    other = partition(banking.train.labels, 20, cfg, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))
    flat = np.concatenate(parts)
    assert len(flat) == len(np.unique(flat))
    assert min(len(p) for p in parts) >= 8
    if kind != "quantity_skew":
        assert len(flat) == len(banking.train.labels)


def test_dirichlet_skews_labels(banking):
    """Small alpha concentrates each client's labels; large alpha approaches IID."""

    def mean_distinct(alpha):
        parts = partition(banking.train.labels, 20, PartitionConfig(kind="dirichlet", alpha=alpha), seed=0)
        return np.mean([len(np.unique(banking.train.labels[p])) for p in parts])

    assert mean_distinct(0.05) < 0.5 * mean_distinct(100.0)


def test_local_csv_with_own_columns(tmp_path):
    for name, rows in (("train", 30), ("test", 10)):
        lines = ["utterance,intent"] + [f"text number {i},{'a' if i % 2 else 'b'}" for i in range(rows)]
        (tmp_path / f"{name}.csv").write_text("\n".join(lines) + "\n")
    corpus = load_corpus(DataConfig(dataset=str(tmp_path), text_column="utterance", label_column="intent"))
    assert corpus.label_names == ["a", "b"] and len(corpus.train.texts) == 30
    with pytest.raises(FedsimError, match="data.text_column='text' is not a column"):
        load_corpus(DataConfig(dataset=str(tmp_path)))


def test_dynamic_padding_pads_to_batch_longest(banking):
    tok = tokenize(load_tokenizer("tiny-random"), banking.test, max_length=64)
    idx = np.arange(16)
    batch = tok.batch(idx)
    assert batch["input_ids"].shape[1] == tok.lengths[idx].max() < 64
    assert int(batch["attention_mask"].sum()) == int(tok.lengths[idx].sum())


def test_data_labels_keeps_or_merges_labels_in_both_splits():
    full = load_corpus(DataConfig())
    kept = load_corpus(DataConfig(labels=["exchange_rate", "card_arrival"]))
    assert kept.label_names == ["exchange_rate", "card_arrival"]
    for split in ("train", "test"):
        whole, part = getattr(full, split), getattr(kept, split)
        expected = [t for t, y in zip(whole.texts, whole.labels) if full.label_names[y] in ("exchange_rate", "card_arrival")]
        assert part.texts == expected
        assert [kept.label_names[y] for y in part.labels] == [full.label_names[y] for y in whole.labels if full.label_names[y] in kept.label_names]
    merged = load_corpus(DataConfig(labels={"money": ["exchange_rate", "cash_withdrawal_charge"], "card": ["card_arrival"]}))
    names = full.label_names
    counts = {n: int((full.test.labels == names.index(n)).sum()) for n in ("exchange_rate", "cash_withdrawal_charge", "card_arrival")}
    assert merged.label_names == ["money", "card"]
    assert list(np.bincount(merged.test.labels)) == [counts["exchange_rate"] + counts["cash_withdrawal_charge"], counts["card_arrival"]]


def test_an_unknown_label_is_one_line():
    with pytest.raises(FedsimError, match="data.labels: 'no_such_intent' is not a label"):
        load_corpus(DataConfig(labels=["card_arrival", "no_such_intent"]))
