"""The causal-LM task (fedsim/tasks/causal_lm.py) on tiny random decoders (OPT, GPT-2, Llama) saved to a local
directory with their LM head and loaded by path, as a user's own checkpoint would be: the loss sees the answer
only, runs are reproducible byte for byte on both Flower engines, the exported adapter is a PEFT CAUSAL_LM
adapter that reproduces the logits, and exact match is computed from real greedy generation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from fedsim.runner import run_scenario
from fedsim.runtime import get_runtime
from tests.conftest import TINY, save_tiny_decoders, tiny_scenario

FAMILIES = ("opt", "gpt2", "llama")
TWO_INTENTS = ["card_arrival", "exchange_rate"]


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    return save_tiny_decoders(tmp_path_factory.mktemp("causal"), AutoModelForCausalLM)


def lm_scenario(path, **overrides):
    base = dict(
        model={"backbone": path},
        task={"name": "causal-lm", "max_new_tokens": 6},
        data={**TINY["data"], "labels": TWO_INTENTS, "eval_samples": 24},
        train={**TINY["train"], "engine": "per-client"},
    )
    return tiny_scenario(**{**base, **overrides})


def test_the_loss_is_on_the_answer_and_its_end_token_only(decoders):
    runtime = get_runtime(lm_scenario(decoders["opt"]))
    tokenizer = runtime.task.tokenizer
    batch = runtime.train.batch(np.arange(4))
    for row in range(4):
        prompt = int(batch["prompt_lengths"][row])
        real = int(batch["attention_mask"][row].sum())
        labels = batch["labels"][row]
        assert (labels[:prompt] == -100).all() and (labels[real:] == -100).all()
        answer = labels[prompt:real].tolist()
        assert answer[-1] == tokenizer.sep_token_id  # MiniLM's WordPiece vocabulary: [SEP] ends the answer
        assert tokenizer.decode(answer[:-1]) in ("card arrival", "exchange rate")
        assert tokenizer.decode(batch["input_ids"][row, :prompt]).startswith("[CLS] query :")
    # The loss is the NLL of exactly those tokens, each predicted from the position before: shifting or masking
    # wrongly changes it. Each row's mean, then the mean over rows.
    logits = torch.randn(4, batch["input_ids"].shape[1], tokenizer.vocab_size)
    log_p = torch.log_softmax(logits, -1)
    rows = []
    for row in range(4):
        prompt, real = int(batch["prompt_lengths"][row]), int(batch["attention_mask"][row].sum())
        answer = batch["input_ids"][row, prompt:real]
        rows.append(-log_p[row, torch.arange(prompt - 1, real - 1), answer].mean())
    torch.testing.assert_close(runtime.task.loss(logits, batch["labels"], reduction="none"), torch.stack(rows))
    torch.testing.assert_close(runtime.task.loss(logits, batch["labels"]), torch.stack(rows).mean())


@pytest.mark.parametrize("name", FAMILIES)
def test_a_decoder_fine_tunes_as_a_causal_lm_reproducibly_and_its_adapter_loads_with_peft(decoders, name, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    scenario = lm_scenario(decoders[name])
    summary = run_scenario(scenario, tmp_path / "a", progress=False)
    run_scenario(scenario, tmp_path / "b", progress=False)
    for ledger in ("rounds.csv", "clients.csv"):
        assert (tmp_path / "a" / ledger).read_bytes() == (tmp_path / "b" / ledger).read_bytes(), ledger
    assert summary["metric"] == "exact_match" and np.isfinite(summary["final_loss"]) and 0 <= summary["final_accuracy"] <= 1
    config = json.loads((tmp_path / "a" / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and not config.get("modules_to_save")

    runtime = get_runtime(scenario)
    batch = runtime.test.batch(np.arange(8))
    with torch.no_grad():
        simulator = runtime.model.logits(**batch)
        base = AutoModelForCausalLM.from_pretrained(decoders[name])
        exported = PeftModel.from_pretrained(base, str(tmp_path / "a" / "adapter")).eval()
        reloaded = exported(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(reloaded, simulator, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_cohort_engine_trains_a_causal_lm_as_the_per_client_engine_does(decoders, name, tmp_path):
    import pandas as pd

    ledgers = {}
    for engine in ("per-client", "cohort"):
        scenario = lm_scenario(decoders[name], train={**TINY["train"], "engine": engine})
        run_scenario(scenario, tmp_path / engine, progress=False)
        ledgers[engine] = pd.read_csv(tmp_path / engine / "clients.csv")
    a, b = ledgers["per-client"], ledgers["cohort"]
    assert (a["bytes_up"] == b["bytes_up"]).all() and (a["bytes_up"] > 0).all()
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-4)


@pytest.mark.flower
def test_the_flower_simulation_engine_gives_the_inline_ledger_for_a_causal_lm(decoders, tmp_path):
    scenario = lm_scenario(decoders["llama"], engine="flower", clients={"num_clients": 4, "per_round": 2})
    run_scenario(scenario, tmp_path / "flower", progress=False)
    run_scenario(scenario.model_copy(update={"engine": "inline"}), tmp_path / "inline", progress=False)
    for name in ("rounds.csv", "clients.csv"):
        assert (tmp_path / "flower" / name).read_bytes() == (tmp_path / "inline" / name).read_bytes(), name


def yes_scenario(path):
    """One fixed answer for every query, which a round of training teaches the model to generate."""
    return lm_scenario(
        path,
        rounds=1,
        task={"name": "causal-lm", "answer": " yes", "max_new_tokens": 4},
        adapter={"max_rank": 8, "target_modules": ["q_proj", "v_proj", "out_proj", "fc1", "fc2"]},
        train={**TINY["train"], "engine": "per-client", "local_steps": 8, "lr": 2e-2},
        policy={"name": "fixed", "rank": 8},
    )


@pytest.fixture(scope="module")
def trained_yes(decoders, tmp_path_factory):
    """The OPT trained on `yes_scenario`: (scenario, run directory, summary, the global adapter's payload)."""
    from fedsim.adapter_state import state_from_model, truncate

    scenario = yes_scenario(decoders["opt"])
    out = tmp_path_factory.mktemp("yes") / "run"
    summary = run_scenario(scenario, out, progress=False)
    runtime = get_runtime(scenario)
    return scenario, out, summary, truncate(state_from_model(runtime.model), [8] * runtime.n_layers)


def test_exact_match_counts_real_greedy_answers(trained_yes):
    """With one fixed answer for every query, a round teaches the model to generate it: exact match climbs from 0
    (the untrained adapter) to 1 and the answer loss falls, so generation, cutting at the end token and the
    comparison all work. (The loss falls only a little: a 32-wide model with its random, frozen LM head can make
    the answer the arg-max but cannot sharpen 30,522 near-equal logits much.)"""
    from fedsim.adapter_state import truncate
    from fedsim.training import evaluate

    scenario, out, summary, trained = trained_yes
    runtime = get_runtime(scenario)
    untrained = truncate(runtime.initial_state, [8] * runtime.n_layers)
    loss, exact = evaluate(runtime, untrained, runtime.eval_subset)
    assert exact == 0.0 and loss > 5.0
    assert summary["final_accuracy"] == 1.0 and summary["final_loss"] < loss
    assert evaluate(runtime, trained, runtime.eval_subset) == pytest.approx((summary["final_loss"], 1.0))
    # Plots name the task's metric on their axes.
    from fedsim.collect import find_finished_runs
    from fedsim.plots import make_plots, metric_name

    assert metric_name(find_finished_runs(out.parent)) == "exact match"
    assert any(p.name.startswith("accuracy_at_budget") for p in make_plots(out.parent))


def test_exact_match_is_pure_greedy_whatever_generation_config_the_checkpoint_ships(decoders, trained_yes, tmp_path):
    """The same weights with a generation_config.json that asks for a repetition penalty, beams, a ban on the end
    token and more: the trained adapter's exact match and loss are those of the checkpoint without it."""
    import shutil

    from fedsim.training import evaluate

    scenario, _, summary, trained = trained_yes
    shipped = tmp_path / "opt-with-generation-config"
    shutil.copytree(decoders["opt"], shipped)
    end = get_runtime(scenario).task.eos
    settings = {"repetition_penalty": 5.0, "no_repeat_ngram_size": 1, "num_beams": 3, "min_new_tokens": 4, "suppress_tokens": [end], "do_sample": True}
    (shipped / "generation_config.json").write_text(json.dumps(settings))
    runtime = get_runtime(yes_scenario(str(shipped)))
    assert evaluate(runtime, trained, runtime.eval_subset) == pytest.approx((summary["final_loss"], 1.0))


def test_exact_match_counts_special_tokens_the_model_generates(decoders):
    """Continuations stand in for generate(): the end token cuts them (HF pads a row only after it), and a special
    token generated before it is part of the answer given, as in a string comparison."""
    runtime = get_runtime(lm_scenario(decoders["llama"]))
    task, tokenizer = runtime.task, runtime.task.tokenizer
    batch = runtime.batch("test", np.arange(1))
    labels, prompt_lengths = batch.pop("labels"), batch.pop("prompt_lengths")
    answer = runtime.test.token_ids[0][int(prompt_lengths[0]) : -1]
    assert tokenizer.pad_token_id != task.eos and tokenizer.decode(answer) in ("card arrival", "exchange rate")
    more = tokenizer("and more", add_special_tokens=False)["input_ids"]
    cases = {
        "answer, end": (answer + [task.eos], 1),
        "answer, end, padding": (answer + [task.eos, tokenizer.pad_token_id, tokenizer.pad_token_id], 1),
        "[UNK] answer, end": ([tokenizer.unk_token_id] + answer + [task.eos], 0),
        "[CLS] [PAD] answer, end": ([tokenizer.cls_token_id, tokenizer.pad_token_id] + answer + [task.eos], 0),
        "answer [PAD], end": (answer + [tokenizer.pad_token_id, task.eos], 0),
        "answer and more, no end": (answer + more, 0),
    }

    class Continues:
        def __init__(self, continuation):
            self.continuation = continuation

        def generate(self, prompts, mask, max_new_tokens, eos, pad):
            return torch.cat([prompts, torch.tensor([self.continuation[:max_new_tokens]])], 1)

    for case, (continuation, hit) in cases.items():
        assert task._exact_matches(Continues(continuation), batch, labels, prompt_lengths, runtime.autocast) == hit, case


def test_an_answer_longer_than_max_new_tokens_is_refused_before_the_run(decoders):
    """'card arrival' and 'exchange rate' take 2 WordPiece tokens and the end token: with max_new_tokens=2 no answer
    could ever be generated whole, so exact match would be 0 whatever the training."""
    from fedsim.runner import preflight
    from fedsim.runtime import Runtime
    from fedsim.types import FedsimError

    short = lm_scenario(decoders["opt"], task={"name": "causal-lm", "max_new_tokens": 2})
    message = "task.max_new_tokens=2 is shorter than the answer for label 'card_arrival' (3 tokens with its end token)"
    for check in (preflight, Runtime):
        with pytest.raises(FedsimError, match=re.escape(message)) as error:
            check(short)
        assert "\n" not in str(error.value) and str(error.value).endswith("allowed: task.max_new_tokens >= 3")
    preflight(lm_scenario(decoders["opt"], task={"name": "causal-lm", "max_new_tokens": 3}))


def test_generating_past_the_backbones_positions_is_refused_before_the_run(decoders):
    """Evaluation generates up to max_new_tokens after a prompt of up to data.max_length tokens: beyond GPT-2's 128
    learned positions it would fail only after training (IndexError; a device-side assert on a GPU)."""
    from fedsim.runner import preflight
    from fedsim.types import FedsimError

    too_far = lm_scenario(decoders["gpt2"], task={"name": "causal-lm", "max_new_tokens": 16}, data={**TINY["data"], "labels": TWO_INTENTS, "max_length": 128})
    with pytest.raises(FedsimError) as error:
        preflight(too_far)
    assert str(error.value) == (
        f"data.max_length=128 + task.max_new_tokens=16 exceeds the 128 token positions of model.backbone={decoders['gpt2']!r} "
        "(generation for exact match goes that far); allowed: data.max_length + task.max_new_tokens <= 128"
    )
    preflight(lm_scenario(decoders["gpt2"], task={"name": "causal-lm", "max_new_tokens": 16}, data={**TINY["data"], "labels": TWO_INTENTS, "max_length": 112}))


def test_a_decoder_saved_without_its_lm_head_is_refused_unless_the_head_is_tied(decoders, tmp_path):
    """AutoModel saves the decoder without its LM head: loaded for generation, an untied head (Llama's) would be
    random; a tied one (GPT-2's) is the input embeddings, which are there."""
    from transformers import AutoModel, AutoModelForCausalLM

    from fedsim.hub import load_tokenizer
    from fedsim.model import load_causal_lm
    from fedsim.types import FedsimError

    for name in ("llama", "gpt2"):
        AutoModel.from_pretrained(decoders[name]).save_pretrained(tmp_path / name)
        load_tokenizer(decoders[name]).save_pretrained(tmp_path / name)
    with pytest.raises(FedsimError, match=re.escape(f"model.backbone={str(tmp_path / 'llama')!r}: the checkpoint has no LM head (lm_head.weight missing")):
        load_causal_lm(str(tmp_path / "llama"))
    tied = load_causal_lm(str(tmp_path / "gpt2"))
    torch.testing.assert_close(tied.lm_head.weight, AutoModelForCausalLM.from_pretrained(decoders["gpt2"]).lm_head.weight)


def test_a_half_precision_checkpoint_trains_in_float32_on_both_engines(decoders, tmp_path):
    """transformers 5 keeps a checkpoint's stored dtype unless told: a Llama saved in bf16 must still train in
    float32 under train.precision=fp32, and the cohort engine's float32 passes must run on it."""
    import pandas as pd
    from transformers import AutoModelForCausalLM

    from fedsim.hub import load_tokenizer

    half = tmp_path / "llama-bf16"
    AutoModelForCausalLM.from_pretrained(decoders["llama"]).to(torch.bfloat16).save_pretrained(half)
    load_tokenizer(decoders["llama"]).save_pretrained(half)
    assert json.loads((half / "config.json").read_text())["dtype"] == "bfloat16"
    ledgers = {}
    for engine in ("per-client", "cohort"):
        scenario = lm_scenario(str(half), train={**TINY["train"], "engine": engine})
        summary = run_scenario(scenario, tmp_path / engine, progress=False)
        assert np.isfinite(summary["final_loss"])
        assert {p.dtype for p in get_runtime(scenario).model.model.parameters()} == {torch.float32}
        ledgers[engine] = pd.read_csv(tmp_path / engine / "clients.csv")
    np.testing.assert_allclose(ledgers["per-client"]["train_loss"], ledgers["cohort"]["train_loss"], rtol=1e-4)


@pytest.fixture(scope="module")
def gpt2_bpe(tmp_path_factory):
    """A tiny GPT-2 with a byte-level BPE tokenizer trained here on BANKING77 texts: like GPT-2's own, it has
    one special token (<|endoftext|>, both bos and eos) and no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2TokenizerFast

    from fedsim.config import DataConfig
    from fedsim.data import load_corpus

    texts = load_corpus(DataConfig()).train.texts[:2000]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    end = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, bos_token=end, eos_token=end, unk_token=end)
    assert tokenizer.pad_token_id is None
    root = tmp_path_factory.mktemp("gpt2-bpe")
    config = GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_positions=128, vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root), tokenizer


@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_a_tokenizer_without_a_pad_token_pads_with_its_end_token(gpt2_bpe, task, tmp_path):
    path, tokenizer = gpt2_bpe
    scenario = lm_scenario(path, task={"name": task})
    summary = run_scenario(scenario, tmp_path / "run", progress=False)
    assert np.isfinite(summary["final_loss"]) and summary["metric"] == ("exact_match" if task == "causal-lm" else "accuracy")
    batch = get_runtime(scenario).train.batch(np.arange(8))
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.eos_token_id).all()
    if task == "causal-lm":  # every answer ends with the end token, which is also the padding
        real = batch["attention_mask"].sum(1) - 1
        assert (batch["labels"][torch.arange(8), real] == tokenizer.eos_token_id).all()


def test_a_prompt_is_tokenised_as_one_string_as_hf_tokenizers_do(gpt2_bpe):
    """Byte-level BPE: "Query: I am ..." is ':', 'ĠI', 'Ġam', ...; tokenising the template's halves and the text
    apart would give ':', 'Ġ', 'I', ... instead, a prompt no HF or TRL pipeline produces."""
    path, tokenizer = gpt2_bpe
    scenario = lm_scenario(path, task={"name": "causal-lm"})
    runtime = get_runtime(scenario)
    corpus = runtime.task.load(scenario.data)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    end = tokenizer.eos_token_id  # also GPT-2's bos, which starts every prompt
    apart = 0
    for i, (text, label) in enumerate(zip(corpus.train.texts, corpus.train.labels)):
        prompt = f"Query: {text}\nIntent:"
        answer = " " + runtime.label_names[label].replace("_", " ")
        assert runtime.train.token_ids[i] == [end] + ids(prompt + answer) + [end]
        assert runtime.train.prompt_lengths[i] == 1 + len(ids(prompt))
        apart += ids("Query: ") + ids(text) + ids("\nIntent:") != ids(prompt)
    assert apart > len(corpus.train.texts) // 4


def test_a_long_text_is_cut_from_the_right_and_the_answer_kept_whole(gpt2_bpe, monkeypatch):
    """data.max_length=24: each text is cut at one of its own token boundaries, the prompt tokenised again as one
    string, the answer and its end token always whole; a tokenizer without offsets cuts at the same places."""
    from fedsim.tasks import build_task

    path, tokenizer = gpt2_bpe
    scenario = lm_scenario(path, task={"name": "causal-lm"})
    task = build_task(scenario.task)
    corpus = task.load(scenario.data)
    encoded = task.encode(tokenizer, corpus.train, 24)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    cut = 0
    for i, (text, label) in enumerate(zip(corpus.train.texts, corpus.train.labels)):
        row, prompt = encoded.token_ids[i], encoded.prompt_lengths[i]
        answer = ids(" " + task.label_names[label].replace("_", " ")) + [tokenizer.eos_token_id]
        assert len(row) <= 24 and row[prompt:] == answer
        shown = tokenizer.decode(row[1:prompt])
        assert shown.startswith("Query: ") and shown.endswith("\nIntent:")
        kept = shown[len("Query: ") : -len("\nIntent:")]
        assert row[1:prompt] == ids(f"Query: {kept}\nIntent:") and text.startswith(kept)
        if kept != text:
            cut += 1
            assert len(row) >= 24 - 2  # cut no further than the budget needs
    assert cut > 10
    monkeypatch.setattr(type(tokenizer), "is_fast", False)
    assert task.encode(tokenizer, corpus.train, 24).token_ids == encoded.token_ids
