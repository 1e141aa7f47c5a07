"""Backbone families (pooling, default LoRA targets, prefix caching), registered by HF model type."""

from fedsim.backbones.registry import FAMILIES, family

__all__ = ["FAMILIES", "family"]
