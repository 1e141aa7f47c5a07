"""Frozen-prefix caching: the hidden states entering the lowest adapted layer, once per example.

When no adapter sits below transformer layer k, the states entering layer k are
a pure function of the input tokens: the embeddings and layers 0..k-1 are frozen
and see no adapter. They are computed the first time an example is used and
reused in every later step and round, so training and evaluation only run
layers k.. and the head. Padding tokens are masked out of attention, so the
states of real tokens do not depend on how the batch was padded; the cache
stores them unpadded and re-pads per batch.
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

    @torch.no_grad()
    def _fill(self, indices: np.ndarray) -> None:
        missing = np.array([i for i in indices if self.states[i] is None], dtype=np.int64)
        if not len(missing):
            return
        missing = missing[np.argsort(self.data.lengths[missing], kind="stable")]
        for start in range(0, len(missing), CHUNK):
            chunk = missing[start : start + CHUNK]
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
