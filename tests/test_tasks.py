"""The task seam: a task registered from this file alone (`fedsim.register_task`, one class plus its config)
runs rounds on both engines, and its loss and metric are what training and the ledger use."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from pydantic import BaseModel

import fedsim
from fedsim.config import load_scenario
from fedsim.data import Corpus, TextDataset, Tokenized
from fedsim.tasks import Task
from fedsim.types import FedsimError


class PairConfig(BaseModel):
    name: Literal["pair-toy"] = "pair-toy"
    first: str = "premise"
    second: str = "hypothesis"
    smoothing: float = 0.1


@fedsim.register_task(PairConfig)
class PairTask(Task):
    """Sentence-pair classification (does the second text repeat the first's word?): its own data schema (two
    text columns), its own encoding (the tokenizer's pair encoding), label-smoothed cross-entropy, macro-F1."""

    metric = "macro_f1"
    calls: Counter = Counter()
    last_score: float | None = None

    def load(self, data):
        PairTask.calls["load"] += 1

        def read(path: Path) -> tuple[list, list[str]]:
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            return [(r[self.config.first], r[self.config.second]) for r in rows], [r["label"] for r in rows]

        (train_x, train_y), (test_x, test_y) = read(Path(data.dataset) / "train.csv"), read(Path(data.dataset) / "test.csv")
        names = sorted(set(train_y))
        encode = lambda ys: np.array([names.index(y) for y in ys], dtype=np.int64)  # noqa: E731
        return Corpus(TextDataset(train_x, encode(train_y)), TextDataset(test_x, encode(test_y)), names)

    def encode(self, tokenizer, dataset, max_length):
        PairTask.calls["encode"] += 1
        first, second = zip(*dataset.texts)
        ids = tokenizer(list(first), list(second), truncation=True, max_length=max_length)["input_ids"]
        return Tokenized(ids, dataset.labels, tokenizer.pad_token_id)

    def loss(self, logits, labels, reduction="mean"):
        import torch.nn.functional as F

        PairTask.calls["loss"] += 1
        return F.cross_entropy(logits, labels, reduction=reduction, label_smoothing=self.config.smoothing)

    def score(self, logits, labels):
        PairTask.calls["score"] += 1
        predicted = logits.argmax(-1)
        f1 = []
        for c in range(logits.shape[1]):
            tp = int(((predicted == c) & (labels == c)).sum())
            fp, fn = int(((predicted == c) & (labels != c)).sum()), int(((predicted != c) & (labels == c)).sum())
            f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
        PairTask.last_score = float(np.mean(f1))
        return PairTask.last_score


def write_pairs(root: Path) -> None:
    rng = np.random.default_rng(0)
    words = ["card", "cash", "rate", "loan", "fee", "pin", "atm", "top"]
    for split, n in (("train", 64), ("test", 24)):
        with (root / f"{split}.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["premise", "hypothesis", "label"])
            for i in range(n):
                a, b = rng.choice(words, 2, replace=False)
                same = i % 2 == 0
                writer.writerow([f"my {a} please", f"the {a if same else b}", "same" if same else "different"])


@pytest.mark.parametrize("engine", ["per-client", "cohort"])
def test_a_task_registered_from_user_code_runs_rounds_and_fills_the_ledger_with_its_metric(engine, tmp_path):
    write_pairs(tmp_path)
    PairTask.calls.clear()
    overrides = {
        "rounds": 2,
        "engine": "inline",
        "model": {"backbone": "tiny-random"},
        "task": {"name": "pair-toy", "smoothing": 0.2},
        "data": {"dataset": str(tmp_path), "eval_samples": None, "partition": {"kind": "iid", "min_examples": 4}},
        "clients": {"num_clients": 4, "per_round": 2},
        "train": {"local_steps": 2, "batch_size": 8, "engine": engine},
    }
    result = fedsim.run("scenarios/quickstart.yaml", overrides, out=tmp_path / "run")
    assert result.summary["metric"] == "macro_f1"
    assert set(PairTask.calls) == {"load", "encode", "loss", "score"}
    # The ledger's `accuracy` is the task's score: the last one computed is the final, whole-test-set evaluation.
    assert result.summary["final_accuracy"] == pytest.approx(PairTask.last_score)
    assert result.rounds["eval_examples"].tolist() == [24, 24]
    assert (result.clients["train_loss"] > 0).all()


def test_an_unknown_task_is_one_clear_error():
    with pytest.raises(FedsimError, match="task.*classification"):
        load_scenario("scenarios/quickstart.yaml", ["task.name=nope"])
