"""Decoder backbones (OPT, GPT-2, Llama) through the real `from_pretrained` path: tiny random configs saved
to a local directory (with MiniLM's tokenizer cut to BANKING77's pieces: no hub access here), loaded by path, trained end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.runner import run_scenario
from fedsim.runtime import get_runtime
from tests.conftest import TINY, banking77_wordpiece, save_tiny_decoders, tiny_scenario

FAMILIES = ("opt", "gpt2", "llama")


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    from transformers import AutoModel

    return save_tiny_decoders(tmp_path_factory.mktemp("decoders"), AutoModel)


def decoder_scenario(path, engine):
    return tiny_scenario(model={"backbone": path}, train={**TINY["train"], "engine": engine})


def test_the_cut_wordpiece_tokenises_banking77_as_minilms_full_vocabulary():
    import csv

    from fedsim.data import EMBEDDED
    from fedsim.hub import load_tokenizer

    cut, full = banking77_wordpiece(), load_tokenizer("minilm")
    with (EMBEDDED["banking77"] / "test.csv").open() as fh:
        texts = [f"Query: {row['text']}\nIntent: {row['category'].replace('_', ' ')}" for row in csv.DictReader(fh)]
    assert cut.vocab_size < full.vocab_size / 8
    assert [cut.convert_ids_to_tokens(ids) for ids in cut(texts)["input_ids"]] == [full.convert_ids_to_tokens(ids) for ids in full(texts)["input_ids"]]
    assert cut.tokenize("α?") == ["[UNK]", "?"] != full.tokenize("α?")  # a character BANKING77 lacks


@pytest.mark.parametrize("name", FAMILIES)
def test_a_decoder_trains_end_to_end_and_both_engines_agree(decoders, name, tmp_path):
    import pandas as pd

    ledgers = {}
    for engine in ("per-client", "cohort"):
        run_scenario(decoder_scenario(decoders[name], engine), tmp_path / engine, progress=False)
        ledgers[engine] = pd.read_csv(tmp_path / engine / "clients.csv")
    a, b = ledgers["per-client"], ledgers["cohort"]
    assert (a["bytes_up"] == b["bytes_up"]).all() and (a["bytes_up"] > 0).all()
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-4)
    runtime = get_runtime(decoder_scenario(decoders[name], "per-client"))
    expected = {"opt": "q_proj", "gpt2": "c_attn", "llama": "q_proj"}[name]
    assert all(expected in layer or "v_proj" in layer for layer in runtime.model.layer_names) and len(runtime.model.layer_names) == (2 if name == "gpt2" else 4)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_decoders_exported_adapter_loads_with_peft_and_gives_the_same_logits(decoders, name, tmp_path):
    from peft import PeftModel

    from fedsim.model import build_classifier

    scenario = tiny_scenario(model={"backbone": decoders[name]}, rounds=1)
    run_scenario(scenario, tmp_path / "run", progress=False)
    runtime = get_runtime(scenario)
    batch = runtime.test.batch(np.arange(16))  # lengths differ: pooling must find each row's last real token
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1
    with torch.no_grad():
        simulator = runtime.model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        base = build_classifier(decoders[name], len(runtime.label_names))
        exported = PeftModel.from_pretrained(base, str(tmp_path / "run" / "adapter")).eval()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        )
    torch.testing.assert_close(exported, simulator, rtol=1e-5, atol=1e-5)


def test_last_token_pooling_ignores_right_padding(decoders):
    """A decoder's sentence vector is its last real token's state: padding the batch wider changes nothing."""
    from fedsim.hub import load_tokenizer
    from fedsim.model import build_classifier

    model = build_classifier(decoders["llama"], 3).eval()
    ids = load_tokenizer(decoders["llama"])(["a short one", "a much longer sentence than the other one"])["input_ids"]
    width = max(map(len, ids))
    batch = torch.zeros((2, width + 5), dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, seq in enumerate(ids):
        batch[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    with torch.no_grad():
        padded = model.features(batch, mask)
        alone = model.features(torch.tensor([ids[0]]), torch.ones((1, len(ids[0])), dtype=torch.long))
    torch.testing.assert_close(padded[0:1], alone, rtol=1e-5, atol=1e-5)


def test_a_decoder_run_is_reproducible_byte_for_byte(decoders, tmp_path):
    from tests.test_golden import ledger_text

    for attempt in ("first", "second"):
        run_scenario(decoder_scenario(decoders["gpt2"], "cohort"), tmp_path / attempt, progress=False)
    for ledger in ("rounds.csv", "clients.csv"):
        assert ledger_text(tmp_path / "first" / ledger) == ledger_text(tmp_path / "second" / ledger)


def test_a_rank_above_a_gpt2_layers_size_names_its_dimensions_in_to_out(decoders):
    """GPT-2's c_attn is a Conv1D, whose weight is [in, out] (32 -> 96 here), not nn.Linear's [out, in]."""
    from fedsim.backbone_check import check_backbone_fits
    from fedsim.types import FedsimError

    scenario = tiny_scenario(model={"backbone": decoders["gpt2"]}, adapter={"max_rank": 64, "target_modules": ["c_attn"]})
    with pytest.raises(FedsimError, match=r"\(h\.0\.attn\.c_attn: 32 -> 96\)"):
        check_backbone_fits(scenario)


def test_a_half_precision_checkpoint_loads_in_float32(decoders, tmp_path):
    """transformers 5 keeps a checkpoint's stored dtype unless told: a bf16 or fp16 OPT must still give a float32
    classifier (the base trains under train.precision=fp32) and train on the cohort engine."""
    from transformers import AutoModel

    from fedsim.hub import load_tokenizer
    from fedsim.model import build_classifier

    for dtype in (torch.bfloat16, torch.float16):
        AutoModel.from_pretrained(decoders["opt"]).to(dtype).save_pretrained(tmp_path / str(dtype))
        load_tokenizer(decoders["opt"]).save_pretrained(tmp_path / str(dtype))
        model = build_classifier(str(tmp_path / str(dtype)), 3)
        assert {p.dtype for p in model.parameters()} == {torch.float32}, dtype
    summary = run_scenario(decoder_scenario(str(tmp_path / str(torch.float16)), "cohort"), tmp_path / "run", progress=False)
    assert np.isfinite(summary["final_loss"])
