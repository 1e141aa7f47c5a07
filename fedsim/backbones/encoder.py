"""BERT-style encoders (BERT, RoBERTa, MiniLM, ...): masked mean pooling over the tokens, as
sentence-transformers' all-MiniLM-L6-v2 is trained to be used."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.backbones.base import Backbone


class EncoderBackbone(Backbone):
    """`layerwise`: the family's blocks can be run one by one as `block(hidden, mask)` from the embeddings'
    output (frozen-prefix caching and nano's server side rely on it). True only for families checked to
    give the model's own hidden states that way (BERT, RoBERTa, XLM-R): MPNet's blocks return tuples and
    need the encoder's relative-position bias, DeBERTa-v2's too, ELECTRA projects its embeddings first."""

    kind = "encoder"

    def __init__(self, default_targets: tuple[str, ...], fan_in_fan_out: bool = False, layerwise: bool = False):
        super().__init__(default_targets, fan_in_fan_out)
        self.layerwise = layerwise

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)).float()

    def blocks(self, model: nn.Module) -> nn.ModuleList | None:
        if not self.layerwise:
            return None
        layers = getattr(getattr(model, "encoder", None), "layer", None)
        return layers if hasattr(model, "embeddings") and isinstance(layers, nn.ModuleList) else None
