"""The causal-LM task (fedsim/tasks/causal_lm.py) on tiny random decoders (OPT, GPT-2, Llama) saved to a local
directory with their LM head and loaded by path, as a user's own checkpoint would be: the loss sees the answer
only, runs are reproducible byte for byte on both Flower engines, the exported adapter is a PEFT CAUSAL_LM
adapter that reproduces the logits, and exact match is computed from real greedy generation."""

from __future__ import annotations

import json

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


def test_exact_match_counts_real_greedy_answers(decoders, tmp_path):
    """With one fixed answer for every query, a round teaches the model to generate it: exact match climbs from 0
    (the untrained adapter) to 1 and the answer loss falls, so generation, cutting at the end token and the
    comparison all work. (The loss falls only a little: a 32-wide model with its random, frozen LM head can make
    the answer the arg-max but cannot sharpen 30,522 near-equal logits much.)"""
    from fedsim.adapter_state import truncate
    from fedsim.training import evaluate

    scenario = lm_scenario(
        decoders["opt"],
        rounds=1,
        task={"name": "causal-lm", "answer": " yes", "max_new_tokens": 4},
        adapter={"max_rank": 8, "target_modules": ["q_proj", "v_proj", "out_proj", "fc1", "fc2"]},
        train={**TINY["train"], "engine": "per-client", "local_steps": 8, "lr": 2e-2},
        policy={"name": "fixed", "rank": 8},
    )
    summary = run_scenario(scenario, tmp_path / "run", progress=False)
    runtime = get_runtime(scenario)
    untrained = truncate(runtime.initial_state, [8] * runtime.n_layers)
    loss, exact = evaluate(runtime, untrained, runtime.eval_subset)
    assert exact == 0.0 and loss > 5.0
    assert summary["final_accuracy"] == 1.0 and summary["final_loss"] < loss
    # Plots name the task's metric on their axes.
    from fedsim.collect import find_finished_runs
    from fedsim.plots import make_plots, metric_name

    assert metric_name(find_finished_runs(tmp_path)) == "exact match"
    assert any(p.name.startswith("accuracy_at_budget") for p in make_plots(tmp_path))


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
