"""Decoder LMs (OPT, GPT-2, Llama, Qwen, Mistral): the hidden state of each sequence's last real token,
as HF's `*ForSequenceClassification` pools (it is the only position that has attended to the whole
text under causal attention). fedsim pads on the right, so that token is at attention_mask.sum() - 1.
Frozen-prefix caching is not offered for decoders (their blocks take rotary or learned positions
from the model's own forward)."""

from __future__ import annotations

import torch

from fedsim.backbones.base import Backbone


class DecoderBackbone(Backbone):
    kind = "decoder"

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        last = (attention_mask.sum(1) - 1).clamp_min(0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
