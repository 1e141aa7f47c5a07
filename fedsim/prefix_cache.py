"""Frozen-prefix caching: the hidden states entering the lowest adapted layer, once per example.

When no adapter sits below transformer layer k, the states entering layer k are
a pure function of the input tokens: the embeddings and layers 0..k-1 are frozen
and see no adapter. They are computed the first time an example is used and
reused in every later step and round, so training and evaluation only run
layers k.. and the head. The cache stores the states of real tokens unpadded and
re-pads them per batch.

Each example's states are computed in a fixed chunk: the split sorted by length
(then index) and cut every CHUNK examples, and a miss fills every chunk it
touches. Masked padding leaves real tokens' states equal only up to rounding
(the padded width changes the matmuls' shapes: 1.5e-8 on tiny-random, 8e-7 on
MiniLM), so chunks made of "whatever is missing now" made a run's numbers depend
on what the same process had computed before (a sweep worker, a warm SuperNode).
"""

from __future__ import annotations

import numpy as np
import torch

from fedsim.data import Tokenized

CHUNK = 64


class PrefixCache:
    def __init__(self, classifier, data: Tokenized, layers: int, dtype: torch.dtype = torch.float32):
        self.classifier = classifier
        self.data = data
        self.layers = layers
        self.dtype = dtype
        self.states: list[torch.Tensor | None] = [None] * len(data)
        order = np.argsort(np.asarray(data.lengths), kind="stable")  # similar lengths together: little padding
        self.chunks = [order[start : start + CHUNK] for start in range(0, len(order), CHUNK)]
        self.chunk_of = np.empty(len(data), dtype=np.int64)
        for number, chunk in enumerate(self.chunks):
            self.chunk_of[chunk] = number

    @torch.no_grad()
    def _fill(self, indices: np.ndarray) -> None:
        missing = sorted({int(self.chunk_of[i]) for i in indices if self.states[i] is None})
        for number in missing:
            chunk = self.chunks[number]
            batch = self.data.batch(chunk)
            device = next(self.classifier.parameters()).device  # the states are kept in host memory
            hidden = self.classifier.encode_prefix(batch["input_ids"].to(device), batch["attention_mask"].to(device), self.layers).cpu()
            for row, i in enumerate(chunk):
                self.states[i] = hidden[row, : self.data.lengths[i]].to(self.dtype).clone()

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """Model inputs for `indices`: cached states padded to the batch's longest example."""
        self._fill(indices)
        batch = self.data.batch(indices)
        width = batch["input_ids"].shape[1]
        hidden_size = self.states[indices[0]].shape[-1]
        prefix = torch.zeros((len(indices), width, hidden_size), dtype=self.dtype)
        for row, i in enumerate(indices):
            prefix[row, : self.data.lengths[i]] = self.states[i][:width]
        return {
            "prefix_hidden": prefix.float(),
            "prefix_layers": self.layers,
            "attention_mask": batch["attention_mask"],
            "labels": batch["labels"],
        }
