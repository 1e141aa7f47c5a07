"""What a task is to fedsim: its data schema, how an example becomes token ids, its loss and its metric.

A task owns everything that depends on what is being learned, and nothing about how (adapters, engines,
channels). Today's tasks map a text to one of `len(corpus.label_names)` outputs through the model's head
(sequence classification; `fedsim.tasks.classification`). Every engine calls the same four methods:

    load(data)                          -> Corpus: train and test TextDatasets, the label names (data schema)
    encode(tokenizer, dataset, max_len) -> Tokenized: unpadded token ids and labels (collation pads per batch)
    loss(logits, labels, reduction)     -> the training objective on a batch ('mean', 'sum' or 'none' per row)
    score(logits, labels)               -> the task's metric on the whole evaluated set (higher is better)

The ledger's `accuracy` column holds `score`; the metric's name (`metric`) is written to summary.json.
A task module imports torch only inside these methods, so reading a scenario stays free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from fedsim.config import DataConfig
    from fedsim.data import Corpus, TextDataset, Tokenized


class Task:
    metric = "accuracy"  # the name of what `score` returns

    def __init__(self, config):
        self.config = config

    def load(self, data: DataConfig) -> Corpus:
        raise NotImplementedError

    def encode(self, tokenizer, dataset: TextDataset, max_length: int) -> Tokenized:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        raise NotImplementedError

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        raise NotImplementedError
