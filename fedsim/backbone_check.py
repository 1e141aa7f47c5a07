"""Static checks of a scenario against its backbone, before any weight is read: the backbone exists, its token
positions hold data.max_length, the LoRA targets exist, and adapter.max_rank is within the adapted layers'
dimensions. Runs in `fedsim validate` and before every run.

What the config alone says is read without torch (`fedsim validate scenarios/quickstart.yaml` then answers
without importing it): tiny-random's, the embedded MiniLM's and a local directory's config.json, and a BERT
encoder's attention projections (query, key, value: hidden -> hidden). Anything else builds a weightless
(meta-device) copy of the backbone with transformers, exact for every family; tests check that the two agree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

from fedsim.adapters import ADAPTERS
from fedsim.hub import TINY_RANDOM, load_tokenizer, minilm_path
from fedsim.types import FedsimError


def validate_backbone(backbone: str) -> None:
    """Fail fast, in the CLI, on a backbone that cannot be loaded (before any run directory exists)."""
    if backbone in ("minilm", "tiny-random"):
        return
    directory = Path(backbone)
    if directory.is_dir():
        weights = [p for pattern in ("*.safetensors", "pytorch_model*.bin") for p in directory.glob(pattern)]
        if not (directory / "config.json").is_file() or not weights:
            missing = "config.json" if not (directory / "config.json").is_file() else "weights (*.safetensors or pytorch_model*.bin)"
            raise FedsimError(
                f"model.backbone={backbone!r}: the directory has no {missing}; allowed: a directory written by save_pretrained "
                "(config.json, weights and tokenizer), 'minilm' or 'tiny-random'"
            )
    load_tokenizer(backbone)


# --- static checks of a scenario against its backbone (no weights loaded) ------------------------

_LAYER_INDEX = re.compile(r"\.(?:layers|layer|h|block|blocks)\.(\d+)\.")


def backbone_config(backbone: str, hf: bool = False):
    """The backbone's config (sizes only; nothing is downloaded, no weights are read). A BERT config on disk
    (tiny-random, the embedded MiniLM, a local directory's config.json) is read as plain JSON, so that no torch
    is needed: its JSON names are its attribute names. Other families go through transformers, whose config
    objects also map aliases (GPT-2's n_positions is max_position_embeddings); so does `hf=True`, which
    building a model needs."""
    if not hf:
        if backbone == "tiny-random":
            return SimpleNamespace(model_type="bert", vocab_size=30522, max_position_embeddings=128, **TINY_RANDOM)
        path = Path(minilm_path() if backbone == "minilm" else backbone) / "config.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (ValueError, OSError):
            raw = None  # transformers' reader below says what is wrong with it
        if isinstance(raw, dict) and raw.get("model_type") == "bert":
            return SimpleNamespace(**raw)
    from transformers import AutoConfig, BertConfig

    if backbone == "tiny-random":
        return BertConfig(vocab_size=30522, max_position_embeddings=128, **TINY_RANDOM)
    source = minilm_path() if backbone == "minilm" else backbone
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        raise FedsimError(
            f"model.backbone={backbone!r}: not found; allowed: 'minilm', 'tiny-random', a local model directory, "
            "or an HF model id already in the local cache (nothing is downloaded)"
        ) from None


def max_positions(config) -> int | None:
    """Tokens the backbone can take: its position embeddings (RoBERTa-style models reserve padding_idx + 1)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    if "roberta" in str(getattr(config, "model_type", "")) or getattr(config, "model_type", "") == "camembert":
        positions -= (getattr(config, "pad_token_id", 1) or 1) + 1
    return positions


BERT_ATTENTION = ("query", "key", "value")  # hidden -> hidden in every BERT-family encoder layer


def adapted_dims(config, target_modules: list[str], layers: list[int] | None, backbone: str | None = None) -> dict[str, tuple[int, int]]:
    """(in, out) of every module LoRA would adapt. A BERT encoder's attention projections are read off its config
    (no torch); anything else is found on a weightless (meta-device) copy of the backbone."""
    if getattr(config, "model_type", None) == "bert" and target_modules and set(target_modules) <= set(BERT_ATTENTION):
        hidden = int(config.hidden_size)
        kept = [i for i in range(int(config.num_hidden_layers)) if layers is None or i in layers]
        return {f"encoder.layer.{i}.attention.self.{t}": (hidden, hidden) for i in kept for t in BERT_ATTENTION if t in target_modules}
    import torch
    from torch import nn
    from transformers import AutoModel

    if not hasattr(config, "to_dict"):  # a plain-JSON config: transformers' object builds the model
        config = backbone_config(backbone, hf=True)
    with torch.device("meta"):
        encoder = AutoModel.from_config(config)
    dims = {}
    for name, module in encoder.named_modules():
        if not any(name == key or name.endswith("." + key) for key in target_modules):
            continue
        if layers is not None:
            match = _LAYER_INDEX.search("." + name + ".")
            if match is None or int(match.group(1)) not in layers:
                continue
        if isinstance(module, nn.Linear):
            dims[name] = (module.in_features, module.out_features)
        elif isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 2:
            # transformers' Conv1D (GPT-2's c_attn, c_fc, ...) and nn.Embedding store [in, out], unlike nn.Linear.
            dims[name] = tuple(module.weight.shape)
    return dims


def check_answers_fit(scenario) -> None:
    """A generating task's every answer, tokenised by the backbone's tokenizer, fits task.max_new_tokens (the task's
    `answer_ids` raises), so that `fedsim validate` and a run's pre-checks catch it before any weight is built."""
    from fedsim.tasks import build_task

    task = build_task(scenario.task)
    answer_ids = getattr(task, "answer_ids", None)
    if answer_ids is not None:
        task.load(scenario.data)
        answer_ids(load_tokenizer(scenario.model.backbone))


def check_backbone_fits(scenario) -> int | None:
    """The number of adapted layers the adapter will add (a kind's fixed `adapted_layers`, e.g. nano's two streams; None
    when unknown), after checking
    data.max_length (plus task.max_new_tokens, for a task that generates) within the backbone's positions; a generating
    task's answers within task.max_new_tokens; adapter.max_rank within the adapted layers' dimensions.

    A rank above min(in, out) of a layer adds nothing (rank(B A) <= min(in, out)) and only costs
    memory and time (adapter.max_rank=100000 on MiniLM would allocate ~3.7 GB of LoRA factors).
    """
    config = backbone_config(scenario.model.backbone)
    backbone = scenario.model.backbone
    positions = max_positions(config)
    if positions is not None and scenario.data.max_length > positions:
        raise FedsimError(
            f"data.max_length={scenario.data.max_length} exceeds the {positions} token positions of model.backbone={backbone!r}; allowed: 8..{positions}"
        )
    new_tokens = getattr(scenario.task, "max_new_tokens", None)
    if new_tokens is not None and positions is not None and scenario.data.max_length + new_tokens > positions:
        # Evaluation generates up to max_new_tokens past a prompt of up to max_length tokens; past the last position
        # embedding generation fails only then, after training (IndexError; a device-side assert on a GPU).
        raise FedsimError(
            f"data.max_length={scenario.data.max_length} + task.max_new_tokens={new_tokens} exceeds the {positions} token positions "
            f"of model.backbone={backbone!r} (generation for exact match goes that far); allowed: data.max_length + task.max_new_tokens <= {positions}"
        )
    if new_tokens is not None:
        check_answers_fit(scenario)
    adapter = scenario.adapter
    if ADAPTERS[adapter.kind].layerwise:
        from fedsim.backbones import family  # imports torch

        if not getattr(family(config), "layerwise", False):
            raise FedsimError(
                f"model.backbone={backbone!r} ({getattr(config, 'model_type', '?')}): adapter.kind={adapter.kind} runs the "
                "transformer blocks one by one, which fedsim supports for BERT, RoBERTa and XLM-R encoders only; "
                "allowed: 'minilm', 'tiny-random', such a model, or adapter.kind=lora"
            )
    if ADAPTERS[adapter.kind].rank_cap == "hidden":
        hidden = int(getattr(config, "hidden_size", 0) or 0)
        if hidden and adapter.max_rank > hidden:
            raise FedsimError(
                f"adapter.max_rank={adapter.max_rank} exceeds {hidden}, the hidden size of model.backbone={backbone!r} "
                f"(a NanoAdapter's rank cannot exceed it); allowed: 1..{hidden}"
            )
        return ADAPTERS[adapter.kind].adapted_layers
    if adapter.target_modules:
        targets = adapter.target_modules
    else:
        from fedsim.backbones import family  # the family's defaults (imports torch)

        targets = family(backbone_config(backbone, hf=True)).default_targets
    dims = adapted_dims(config, targets, adapter.layers, backbone)
    if not dims:
        where = f" in adapter.layers={adapter.layers}" if adapter.layers is not None else ""
        raise FedsimError(f"adapter.target_modules={targets}{where}: no such layer in model.backbone={backbone!r}")
    name, (d_in, d_out) = min(dims.items(), key=lambda item: min(item[1]))
    cap = min(d_in, d_out)
    if adapter.max_rank > cap:
        raise FedsimError(
            f"adapter.max_rank={adapter.max_rank} exceeds {cap}, the smallest dimension of the adapted layers "
            f"({name.split('.', 1)[-1] if name.count('.') > 3 else name}: {d_in} -> {d_out}); a larger rank adds nothing "
            f"(rank(B A) <= min(in, out)); allowed: 1..{cap}"
        )
    return len(dims)
