"""Backbone families by HF `config.model_type`: a new family is one line here (its kind and the modules
LoRA adapts by default, as PEFT's own defaults name them)."""

from __future__ import annotations

from fedsim.backbones.base import Backbone
from fedsim.backbones.decoder import DecoderBackbone
from fedsim.backbones.encoder import EncoderBackbone
from fedsim.types import load_entry_points

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


ENTRY_POINT_GROUP = "fedsim.backbones"  # an entry `<model_type> = "mypackage:FAMILY"` names a Backbone instance
_entry_points_loaded = False


def add_family(model_type: str, backbone: Backbone) -> str:
    if not isinstance(backbone, Backbone):
        raise TypeError(f"not a fedsim.backbones.base.Backbone but {type(backbone).__name__}")
    if model_type in FAMILIES and FAMILIES[model_type] is not backbone:
        raise ValueError(f"model_type {model_type!r} already has a backbone family")
    FAMILIES[model_type] = backbone
    return model_type


def load_backbone_entry_points() -> list[str]:
    """Register the backbone families that installed distributions declare under ENTRY_POINT_GROUP, each for the model
    type its entry names (a broken one is skipped with one line on stderr). Loaded on the first `family()` call, not
    when a scenario is read: a family needs torch, which reading a scenario does not import."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    return load_entry_points(ENTRY_POINT_GROUP, add_family, "backbone")


def family(config) -> Backbone:
    """The family of a backbone's HF config; an unlisted model type is an encoder or a decoder by its config."""
    load_backbone_entry_points()
    model_type = str(getattr(config, "model_type", ""))
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    decoder = bool(getattr(config, "is_decoder", False)) or any("CausalLM" in a for a in getattr(config, "architectures", None) or [])
    return DecoderBackbone(("q_proj", "v_proj")) if decoder else EncoderBackbone(("query", "value"))
