"""BERT-style encoders (BERT, RoBERTa, MiniLM, ...): masked mean pooling over the tokens, as
sentence-transformers' all-MiniLM-L6-v2 is trained to be used."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.backbones.base import Backbone


class EncoderBackbone(Backbone):
    kind = "encoder"

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)).float()

    def blocks(self, model: nn.Module) -> nn.ModuleList | None:
        layers = getattr(getattr(model, "encoder", None), "layer", None)
        return layers if hasattr(model, "embeddings") and isinstance(layers, nn.ModuleList) else None
