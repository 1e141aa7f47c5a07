"""Backbone families by HF `config.model_type`: a new family is one line here (its kind and the modules
LoRA adapts by default, as PEFT's own defaults name them)."""

from __future__ import annotations

from fedsim.backbones.base import Backbone
from fedsim.backbones.decoder import DecoderBackbone
from fedsim.backbones.encoder import EncoderBackbone

FAMILIES: dict[str, Backbone] = {
    "bert": EncoderBackbone(("query", "value"), layerwise=True),
    "roberta": EncoderBackbone(("query", "value"), layerwise=True),
    "xlm-roberta": EncoderBackbone(("query", "value"), layerwise=True),
    "mpnet": EncoderBackbone(("q", "v")),
    "opt": DecoderBackbone(("q_proj", "v_proj")),
    "gpt2": DecoderBackbone(("c_attn",), fan_in_fan_out=True),
    "llama": DecoderBackbone(("q_proj", "v_proj")),
    "mistral": DecoderBackbone(("q_proj", "v_proj")),
    "qwen2": DecoderBackbone(("q_proj", "v_proj")),
    "qwen3": DecoderBackbone(("q_proj", "v_proj")),
}


def family(config) -> Backbone:
    """The family of a backbone's HF config; an unlisted model type is an encoder or a decoder by its config."""
    model_type = str(getattr(config, "model_type", ""))
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    decoder = bool(getattr(config, "is_decoder", False)) or any("CausalLM" in a for a in getattr(config, "architectures", None) or [])
    return DecoderBackbone(("q_proj", "v_proj")) if decoder else EncoderBackbone(("query", "value"))
