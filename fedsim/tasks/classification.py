"""Sequence classification: a text (the `data.text_column` of a CSV pair, or BANKING77) to one of its
labels (`data.label_column`); cross-entropy over the head's logits; accuracy, the share of arg-max hits."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from fedsim.tasks.base import Task


class ClassificationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["classification"] = "classification"


class Classification(Task):
    metric = "accuracy"

    def load(self, data):
        from fedsim.data import load_corpus

        return load_corpus(data)

    def encode(self, tokenizer, dataset, max_length):
        from fedsim.data import tokenize

        return tokenize(tokenizer, dataset, max_length)

    def loss(self, logits, labels, reduction="mean"):
        import torch.nn.functional as F

        return F.cross_entropy(logits, labels, reduction=reduction)

    def score(self, logits, labels):
        return int((logits.argmax(-1) == labels).sum()) / len(labels)
