"""Causal-LM fine-tuning on instruction/completion pairs: a labelled text set recast as generation.

Each example becomes `prompt` (with the text) followed by `answer` (with the label's name, underscores read as
spaces) and the end-of-sequence token; BANKING77 so reads "Query: <text>\\nIntent: card arrival</s>". The
prompt is tokenised as one string, as HF tokenizers and TRL's SFTTrainer tokenise it (no token boundary forced
around the text). The model is a decoder LM with LoRA (`fedsim.model.LoraCausalLM`), no head of fedsim's own.

- **Loss** (training): next-token cross-entropy on the answer and its end token only, the prompt masked out
  (label -100), as TRL's completion-only collator and FlowerTune do. A batch's loss is the mean over its
  examples of each answer's mean token NLL: every example counts once, whatever its answer's length, as in
  classification (HF's `labels` loss weights by tokens instead). So the cohort engine, which weighs rows,
  trains exactly as the per-client one.
- **Evaluation**: the ledger's `loss` is the mean negative log-likelihood per answer token over the evaluated
  examples (teacher forcing), so the answer perplexity is exp(loss); its `accuracy` is **exact match**: the greedy
  continuation of the prompt (pure greedy: the checkpoint's generation_config.json is ignored), cut at the end
  token, decoded with its special tokens and stripped of surrounding whitespace, equals the decoded answer. This
  is strict string equality, as HF `evaluate`'s `exact_match` with its default options, not SQuAD's normalised
  EM (no lower-casing, punctuation or article removal). Every answer must fit `task.max_new_tokens` with its end
  token, and `data.max_length + task.max_new_tokens` the backbone's positions. (The metric's name,
  `exact_match`, is in summary.json.)

Assumes a decoder backbone (a local directory or cached HF id) whose tokenizer has an end token (`eos`, or
`sep` for WordPiece vocabularies); the prompt is truncated inside the text so the answer always fits
`data.max_length`. The lora adapter kind only (nano keeps a classification head on the server).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedsim.data import Tokenized
from fedsim.tasks.base import Task
from fedsim.types import FedsimError

IGNORE = -100  # the label of a position that is not trained on (PyTorch's and HF's ignore_index)


class CausalLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["causal-lm"] = "causal-lm"
    prompt: str = Field("Query: {text}\nIntent:", description="The instruction; {text} is the example's text.")
    answer: str = Field(" {label}", description="The completion the model learns; {label} is the label's name, '_' read as ' '.")
    max_new_tokens: int = Field(16, ge=1, le=512, description="Evaluation: the longest greedy continuation generated.")

    @field_validator("prompt")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if value.count("{text}") != 1:
            raise ValueError("must contain {text} exactly once (where the example's text goes)")
        return value


class TokenizedPairs(Tokenized):
    """Prompt + answer token ids; `batch` adds per-token labels (-100 on the prompt and padding) and each row's
    prompt length."""

    def __init__(self, token_ids: list[list[int]], prompt_lengths: list[int], labels: np.ndarray, pad_id: int):
        super().__init__(token_ids, labels, pad_id)
        self.prompt_lengths = np.array(prompt_lengths)

    def batch(self, indices: np.ndarray, pad_to: int | None = None) -> dict:
        import torch

        batch = super().batch(indices, pad_to)
        width = batch["input_ids"].shape[1]
        positions = torch.arange(width)[None, :]
        prompt = torch.as_tensor(self.prompt_lengths[indices])[:, None]
        answer = (positions >= prompt) & batch["attention_mask"].bool()
        batch["labels"] = torch.where(answer, batch["input_ids"], torch.full_like(batch["input_ids"], IGNORE))
        batch["prompt_lengths"] = prompt[:, 0]
        return batch


class CausalLM(Task):
    metric = "exact_match"
    model = "causal-lm"
    adapter_kinds = ("lora",)

    def load(self, data):
        from fedsim.data import load_corpus

        corpus = load_corpus(data)
        self.label_names = corpus.label_names
        return corpus

    def answer_ids(self, tokenizer) -> list[list[int]]:
        """Each label's answer token ids, its end token last (the labels from `load`). Every one must fit
        task.max_new_tokens: a longer answer could never be generated whole, so exact match would always miss it."""
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if self.eos is None:
            raise FedsimError("task.name=causal-lm: the backbone's tokenizer has no end token (eos_token or sep_token); allowed: a tokenizer that has one")
        names = [name.replace("_", " ") for name in self.label_names]
        answers = [tokenizer(self.config.answer.format(label=name), add_special_tokens=False)["input_ids"] + [self.eos] for name in names]
        longest = max(range(len(answers)), key=lambda i: len(answers[i]), default=None)
        if longest is not None and len(answers[longest]) > self.config.max_new_tokens:
            n = len(answers[longest])
            raise FedsimError(
                f"task.max_new_tokens={self.config.max_new_tokens} is shorter than the answer for label {self.label_names[longest]!r} "
                f"({n} tokens with its end token), which greedy generation could then never complete; allowed: task.max_new_tokens >= {n}"
            )
        return answers

    def encode(self, tokenizer, dataset, max_length):
        """Each example's `prompt` (the text in its template) tokenised as one string, as HF and TRL tokenise it,
        then its answer. When they exceed `max_length` the text is cut from the right at one of its own token
        boundaries and the prompt tokenised again, so the answer is always whole."""
        self.tokenizer = tokenizer
        answers = self.answer_ids(tokenizer)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos  # GPT-2, Llama: none
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        head = [start] if start is not None else []
        before, after = self.config.prompt.split("{text}")
        texts = list(dataset.texts)
        prompts = tokenizer([before + text + after for text in texts], add_special_tokens=False)["input_ids"] if texts else []
        rows, prompt_lengths = [], []
        for text, prompt, label in zip(texts, prompts, dataset.labels):
            answer = answers[label]
            budget = max_length - len(head) - len(answer)
            if len(prompt) > budget:
                prompt = self._cut_prompt(tokenizer, before, text, after, budget, len(prompt) - budget)
            if prompt is None:
                template = len(head) + len(tokenizer(before + after, add_special_tokens=False)["input_ids"]) + len(answer)
                raise FedsimError(
                    f"data.max_length={max_length} leaves no room for the text: the prompt's template and the answer "
                    f"{self.label_names[label]!r} take {template} tokens; allowed: a larger data.max_length"
                )
            rows.append(head + prompt + answer)
            prompt_lengths.append(len(head) + len(prompt))
        return TokenizedPairs(rows, prompt_lengths, dataset.labels, self.pad)

    @staticmethod
    def _cut_prompt(tokenizer, before: str, text: str, after: str, budget: int, excess: int) -> list[int] | None:
        """The prompt's ids with the text cut to its first tokens so that they are at most `budget` (None when no text
        token fits). Tokenising the joined string can merge across the cut, so it is retried until it fits."""
        fast = bool(getattr(tokenizer, "is_fast", False))
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast)
        if fast:
            ends = [end for _, end in encoding["offset_mapping"]]
            prefix = lambda keep: text[: ends[keep - 1]]  # noqa: E731
        else:  # a tokenizer without offsets: the kept tokens decoded
            prefix = lambda keep: tokenizer.decode(encoding["input_ids"][:keep])  # noqa: E731
        keep = len(encoding["input_ids"]) - excess
        while keep >= 1:
            prompt = tokenizer(before + prefix(keep) + after, add_special_tokens=False)["input_ids"]
            if len(prompt) <= budget:
                return prompt
            keep -= len(prompt) - budget
        return None

    def loss(self, logits, labels, reduction="mean"):
        """Next-token NLL on the answer tokens: each row's mean over its answer tokens; then 'none' per row,
        'mean' over the rows, 'sum' summed."""
        import torch.nn.functional as F

        target = labels[:, 1:]
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
        per_row = nll.sum(1) / (target != IGNORE).sum(1)
        return {"none": per_row, "mean": per_row.mean(), "sum": per_row.sum()}[reduction]

    def evaluate(self, model, batches, autocast):
        import torch
        import torch.nn.functional as F

        nll, tokens, hits, n = 0.0, 0, 0, 0
        with torch.no_grad():
            for batch in batches:
                labels, prompt_lengths = batch.pop("labels"), batch.pop("prompt_lengths")
                with autocast():
                    logits = model.logits(**batch).float()
                target = labels[:, 1:]
                nll += float(F.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=IGNORE, reduction="sum"))
                tokens += int((target != IGNORE).sum())
                hits += self._exact_matches(model, batch, labels, prompt_lengths, autocast)
                n += len(labels)
        return nll / tokens, hits / n

    def _exact_matches(self, model, batch, labels, prompt_lengths, autocast) -> int:
        """How many rows' greedy continuation of their prompt decodes to their answer."""
        import torch

        ids, device = batch["input_ids"], batch["input_ids"].device
        width = int(prompt_lengths.max())
        prompts = torch.full((len(ids), width), self.pad, dtype=ids.dtype, device=device)
        mask = torch.zeros((len(ids), width), dtype=batch["attention_mask"].dtype, device=device)
        for row, length in enumerate(prompt_lengths.tolist()):  # left padding: every prompt ends where generation starts
            prompts[row, width - length :] = ids[row, :length]
            mask[row, width - length :] = 1
        with autocast():
            generated = model.generate(prompts, mask, self.config.max_new_tokens, self.eos, self.pad)[:, width:]
        hits = 0
        for row in range(len(ids)):
            continuation = generated[row].tolist()
            # generate() pads a row only after its end token, so the cut drops all its padding; special tokens before
            # it were generated, and count: a continuation "[UNK] card arrival" is not the answer "card arrival".
            continuation = continuation[: continuation.index(self.eos)] if self.eos in continuation else continuation
            answer = [t for t in labels[row].tolist() if t != IGNORE][:-1]  # without its end token
            hits += self._text(continuation) == self._text(answer)
        return hits

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False).strip()
