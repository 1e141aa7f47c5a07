"""What fedsim needs to know about a family of HF backbones: how a sentence becomes one vector (pooling),
which modules LoRA adapts when the scenario names none, and where the transformer blocks are (for
frozen-prefix caching). One class per kind of family; `fedsim.backbones.registry` maps HF `model_type`s
to them.
"""

from __future__ import annotations

import torch
from torch import nn


class Backbone:
    kind = "encoder"

    def __init__(self, default_targets: tuple[str, ...], fan_in_fan_out: bool = False):
        self.default_targets = list(default_targets)
        self.fan_in_fan_out = fan_in_fan_out  # weights stored [in, out] (GPT-2's Conv1D), as PEFT's LoraConfig names it

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> nn.ModuleList | None:
        """The transformer blocks, when fedsim can run them one by one from cached hidden states (else None)."""
        return None
