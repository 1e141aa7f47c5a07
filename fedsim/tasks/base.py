"""What a task is to fedsim: its data schema, how an example becomes token ids, its loss and its metric.

A task owns everything that depends on what is being learned, and nothing about how (adapters, engines,
channels): `classification` maps a text to one of `len(corpus.label_names)` outputs through the model's head
(`fedsim.tasks.classification`), `causal-lm` trains a decoder to write the label as text (`fedsim.tasks.causal_lm`).
Every engine calls the same methods:

    load(data)                          -> Corpus: train and test TextDatasets, the label names (data schema)
    encode(tokenizer, dataset, max_len) -> Tokenized: unpadded token ids and labels (collation pads per batch)
    loss(logits, labels, reduction)     -> the training objective on a batch ('mean', 'sum' or 'none' per row)
    score(logits, labels)               -> the task's metric on the whole evaluated set (higher is better)
    evaluate(model, batches, autocast)  -> (mean loss per example, or per token for causal-lm; score); by default from the
                                           logits of every batch, a generative task decodes instead

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
    model = "classifier"  # what the lora kind builds: a head over pooled features, or "causal-lm" (fedsim.model)
    engines: tuple[str, ...] = ("per-client", "cohort")  # the train.engine values that support it
    adapter_kinds: tuple[str, ...] | None = None  # the adapter kinds that support it (None: all)

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

    def evaluate(self, model, batches, autocast) -> tuple[float, float]:
        """Mean loss per example and `score` over all `batches` (dicts of model inputs and `labels`)."""
        import torch

        total_loss, n, all_logits, all_labels = 0.0, 0, [], []
        with torch.no_grad():
            for batch in batches:
                labels = batch.pop("labels")
                with autocast():
                    logits = model.logits(**batch).float()
                total_loss += float(self.loss(logits, labels, reduction="sum"))
                n += len(labels)
                all_logits.append(logits)
                all_labels.append(labels)
        return total_loss / n, self.score(torch.cat(all_logits), torch.cat(all_labels))
