"""Backbones, the classification model, the causal LM, and LoRA injection with per-layer rank masks.

The classifier is a small custom module (encoder, pooling: the mean over tokens for encoders, the last real
token for decoders, `fedsim.backbones`; linear head) and
LoRA is injected by HF PEFT with the head in `modules_to_save`. So the adapter a
run exports is a standard PEFT adapter: build the same classifier with
`build_classifier(backbone, num_labels)` and load it with `PeftModel.from_pretrained`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from fedsim.hub import TINY_RANDOM, load_tokenizer, minilm_path
from fedsim.payload import HEAD_BIAS, HEAD_WEIGHT
from fedsim.types import FedsimError


def load_encoder(backbone: str, dtype: torch.dtype | None = None) -> nn.Module:
    """The backbone's weights (frozen later), in `dtype` when given (bf16 on a GPU: half the memory), else float32
    whatever dtype the checkpoint stores."""
    from transformers import AutoModel, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if backbone == "tiny-random":
        vocab = load_tokenizer(backbone).vocab_size
        # A fixed generator, so every process builds the very same random weights.
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return BertModel(BertConfig(vocab_size=vocab, max_position_embeddings=128, **TINY_RANDOM), add_pooling_layer=False)
    source = minilm_path() if backbone == "minilm" else backbone
    kwargs = {"dtype": _load_dtype(dtype)}
    try:
        return AutoModel.from_pretrained(source, local_files_only=True, add_pooling_layer=False, **kwargs)
    except TypeError:
        return AutoModel.from_pretrained(source, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        raise FedsimError(
            f"model.backbone={backbone!r}: not found; allowed: 'minilm', 'tiny-random', a local model directory, "
            "or an HF model id already in the local cache (nothing is downloaded)"
        ) from None


def _load_dtype(dtype: torch.dtype | None) -> torch.dtype:
    # Never None: transformers 5 then keeps a checkpoint's stored dtype, so a bf16/fp16 checkpoint would train with a
    # half-precision base under train.precision=fp32 (and the cohort engine's float32 matmuls would refuse it).
    return dtype if dtype is not None else torch.float32


class SentenceClassifier(nn.Module):
    """Backbone -> pooling (its family's: masked mean for encoders, last token for decoders,
    `fedsim.backbones`) -> linear head (logits over the classes).

    `forward(prefix_hidden=h, prefix_layers=k)` starts from cached hidden states
    entering transformer layer k instead of from token ids (see `encode_prefix`; encoders only).
    """

    def __init__(self, encoder: nn.Module, num_labels: int):
        super().__init__()
        from fedsim.backbones import family

        self.encoder = encoder
        self.family = family(encoder.config)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)
        self.name_or_path = getattr(encoder.config, "_name_or_path", "")  # PEFT records it in adapter_config.json

    def _layers(self) -> nn.ModuleList:
        return self.family.blocks(self.encoder)

    def _mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def supports_prefix(self) -> bool:
        return self.family.blocks(self.encoder) is not None

    def encode_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: int) -> torch.Tensor:
        """Hidden states entering transformer layer `layers`: embeddings plus the layers below it."""
        hidden = self.encoder.embeddings(input_ids=input_ids)
        mask = self._mask(hidden, attention_mask)
        for layer in self._layers()[:layers]:
            hidden = layer(hidden, mask)
        return hidden

    def features(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prefix_hidden: torch.Tensor | None = None,
        prefix_layers: int = 0,
    ) -> torch.Tensor:
        """Pooled sentence embeddings (what the head sees)."""
        if prefix_hidden is None:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            hidden = prefix_hidden
            mask = self._mask(hidden, attention_mask)
            for layer in self._layers()[prefix_layers:]:
                hidden = layer(hidden, mask)
        return self.family.pool(hidden, attention_mask)

    def forward(self, input_ids=None, attention_mask=None, prefix_hidden=None, prefix_layers: int = 0, **_) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask, prefix_hidden, prefix_layers))


def build_classifier(backbone: str, num_labels: int, dtype: torch.dtype | None = None) -> SentenceClassifier:
    """The base model an exported adapter applies to. The head's initial weights do not matter:
    the adapter carries the trained head."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SentenceClassifier(load_encoder(backbone, dtype), num_labels)
    model.name_or_path = backbone
    return model


class RankedLora:
    """A PEFT LoRA model at `max_rank`, with a rank mask per adapted layer: what every task's LoRA model shares.

    Components beyond a layer's rank are multiplied by zero after lora_A, so they
    neither affect the output nor receive gradient. Subclasses build the PEFT model
    (`self.model`) and say what, besides the factors, is trained (`head_tensors`).
    """

    frozen_prefix_layers = 0
    head = None

    def _wrap(self, base: nn.Module, family, target_modules, max_rank: int, alpha: float, layers, **extra) -> None:
        """PEFT LoRA on `base` at `max_rank` in `target_modules` (the family's defaults when None); `extra`: the
        subclass's own LoraConfig fields (modules_to_save, task_type)."""
        from peft import LoraConfig, get_peft_model
        from peft.tuners.lora import LoraLayer

        logging.getLogger("peft").setLevel(logging.ERROR)
        targets = list(target_modules or family.default_targets)
        config = LoraConfig(
            r=max_rank,
            lora_alpha=alpha,
            lora_dropout=0.0,
            target_modules=targets,
            fan_in_fan_out=family.fan_in_fan_out,
            layers_to_transform=list(layers) if layers is not None else None,
            **extra,
        )
        try:
            self.model = get_peft_model(base, config)
        except ValueError as exc:
            raise FedsimError(f"adapter.target_modules={targets}: {str(exc).splitlines()[0]}") from None
        self.model.eval()  # no dropout: training is deterministic per seed, and cheaper
        self.max_rank = max_rank
        self.layers: list[tuple[str, LoraLayer]] = [
            (name.removeprefix("base_model.model."), module) for name, module in self.model.named_modules() if isinstance(module, LoraLayer)
        ]
        self.layer_names = [name for name, _ in self.layers]
        self._masks = [torch.ones(max_rank) for _ in self.layers]
        for (_, layer), mask in zip(self.layers, self._masks):
            layer.lora_A["default"].register_forward_hook(lambda _m, _i, out, mask=mask: out * mask)

    def logits(self, **batch) -> torch.Tensor:
        """The task's logits for a batch of model inputs (labels removed)."""
        return self.model(**batch)

    # --- factors ----------------------------------------------------------------------------
    def factor(self, index: int) -> tuple[nn.Parameter, nn.Parameter]:
        layer = self.layers[index][1]
        return layer.lora_A["default"].weight, layer.lora_B["default"].weight

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for i in range(len(self.layers)) for p in self.factor(i)]

    def head_tensors(self) -> dict[str, nn.Parameter]:
        """What is trained and sent besides the factors, by payload key (the classification head; none for an LM)."""
        return {}

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head_tensors().values())

    def to(self, device: torch.device) -> RankedLora:
        """The whole model (frozen base, adapters, head) and the rank masks on `device`, in place."""
        self.model.to(device)
        for mask in self._masks:
            mask.data = mask.data.to(device)
        return self

    def set_ranks(self, ranks) -> None:
        for mask, rank in zip(self._masks, ranks):
            mask.zero_()
            mask[: int(rank)] = 1.0

    def params_per_rank(self) -> list[int]:
        """Parameters one rank component costs per layer: a row of A (in) plus a column of B (out)."""
        return [a.shape[1] + b.shape[0] for a, b in (self.factor(i) for i in range(len(self.layers)))]

    def head_param_count(self) -> int:
        return sum(p.numel() for p in self.head_parameters())

    def save_adapter(self, directory: Path) -> None:
        self.set_ranks([self.max_rank] * len(self.layers))
        self.model.save_pretrained(str(directory), save_embedding_layers=False)


class LoraClassifier(RankedLora):
    """LoRA on a `SentenceClassifier`, the head trained beside it (PEFT's `modules_to_save`)."""

    def __init__(
        self,
        backbone: str,
        num_labels: int,
        target_modules: list[str] | None,
        max_rank: int,
        alpha: float,
        layers: list[int] | None = None,
        dtype: torch.dtype | None = None,
    ):
        base = build_classifier(backbone, num_labels, dtype)
        base.head.float()  # the head and the LoRA factors (PEFT keeps them float32) train in float32 under autocast
        self._wrap(base, base.family, target_modules, max_rank, alpha, layers, modules_to_save=["head"])
        self.head = self.model.base_model.model.head.modules_to_save["default"]
        self.classifier: SentenceClassifier = self.model.base_model.model
        self.frozen_prefix_layers = self._frozen_prefix_layers()

    def _frozen_prefix_layers(self) -> int:
        """How many transformer layers sit below every adapter (0 when caching is not valid)."""
        if not self.classifier.supports_prefix():
            return 0
        indices = []
        for name in self.layer_names:
            match = re.search(r"(?:^|\.)layer\.(\d+)\.", name)
            if match is None:  # an adapter outside the transformer layers (e.g. embeddings): nothing is frozen
                return 0
            indices.append(int(match.group(1)))
        return min(indices)

    def head_tensors(self) -> dict[str, nn.Parameter]:
        return {HEAD_WEIGHT: self.head.weight, HEAD_BIAS: self.head.bias}


def load_causal_lm(backbone: str, dtype: torch.dtype | None = None) -> nn.Module:
    """A decoder LM with its LM head (`AutoModelForCausalLM`) from a local directory or the HF cache, in `dtype`
    (float32 when None); nothing is downloaded. A checkpoint without its LM head (saved by `AutoModel`) is refused
    unless the config ties the head to the input embeddings; other weights it lacks are initialised from a fixed seed."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    allowed = "allowed: a local directory or cached HF id of a decoder LM (OPT, GPT-2, Llama, Qwen, Mistral)"
    if backbone in ("minilm", "tiny-random"):
        raise FedsimError(f"model.backbone={backbone!r} is a BERT-style encoder, which task.name=causal-lm cannot generate with; {allowed}")
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model, info = AutoModelForCausalLM.from_pretrained(backbone, local_files_only=True, dtype=_load_dtype(dtype), output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise FedsimError(f"model.backbone={backbone!r}: not loadable as a causal LM ({str(exc).splitlines()[0][:160]}); {allowed}") from None
    # A tied head is the input embeddings and is never reported missing; an untied one that is missing would be random,
    # and every logit, loss and generated token would come from that noise.
    output = model.get_output_embeddings()
    head = next((name for name, module in model.named_modules() if output is not None and module is output), None)
    missing = sorted(key for key in info["missing_keys"] if head is not None and (key == head or key.startswith(head + ".")))
    if missing:
        raise FedsimError(
            f"model.backbone={backbone!r}: the checkpoint has no LM head ({', '.join(missing)} missing; saved without it, "
            f"e.g. by AutoModel); {allowed}, saved with its LM head (AutoModelForCausalLM)"
        )
    return model


class LoraCausalLM(RankedLora):
    """LoRA on a decoder LM (`AutoModelForCausalLM`): no head of fedsim's own, the LM head stays frozen, so only the
    factors are trained and sent. `logits` are the next-token logits, [batch, length, vocabulary]. The exported
    adapter is a standard PEFT `CAUSAL_LM` adapter for `AutoModelForCausalLM.from_pretrained(backbone)`."""

    def __init__(self, backbone: str, target_modules: list[str] | None, max_rank: int, alpha: float, layers: list[int] | None = None, dtype=None):
        from fedsim.backbones import family

        base = load_causal_lm(backbone, dtype)
        # generate() fills every setting its config leaves unset from the model's own generation_config, i.e. the
        # checkpoint's generation_config.json (repetition_penalty, no_repeat_ngram_size, suppress_tokens, ...):
        # cleared here, exact match is pure greedy whatever the checkpoint ships.
        from transformers import GenerationConfig

        base.generation_config = GenerationConfig()
        self._wrap(base, family(base.config), target_modules, max_rank, alpha, layers, task_type="CAUSAL_LM")

    def logits(self, input_ids=None, attention_mask=None, **_) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, eos_token_id: int, pad_token_id: int) -> torch.Tensor:
        """Greedy continuations of left-padded prompts: [batch, prompt length + up to max_new_tokens]."""
        from transformers import GenerationConfig

        greedy = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=greedy)


def build_lora(scenario, num_labels: int, dtype: torch.dtype | None = None) -> RankedLora:
    """The `lora` adapter kind's model (fedsim.adapters): a classifier, or a causal LM for a task that generates."""
    from fedsim.tasks import TASKS

    adapter = scenario.adapter
    if TASKS[scenario.task.name][1].model == "causal-lm":
        return LoraCausalLM(scenario.model.backbone, adapter.target_modules, adapter.max_rank, adapter.alpha, adapter.layers, dtype=dtype)
    return LoraClassifier(scenario.model.backbone, num_labels, adapter.target_modules, adapter.max_rank, adapter.alpha, adapter.layers, dtype=dtype)
