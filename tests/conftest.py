"""Shared fixtures: tiny scenarios that run in seconds on the tiny-random backbone."""

from __future__ import annotations

import csv

import pytest

from fedsim.config import scenario_from_dict

TINY = {
    "name": "tiny",
    "seed": 3,
    "rounds": 2,
    "engine": "inline",
    "model": {"backbone": "tiny-random"},
    "data": {"eval_samples": 64, "eval_full_final": False, "partition": {"kind": "dirichlet", "alpha": 0.5}},
    "clients": {"num_clients": 6, "per_round": 3},
    "adapter": {"max_rank": 8},
    "train": {"local_steps": 2, "batch_size": 8},
    # One torch thread: the tiny network gains nothing from two, and two spin-wait whenever another process (a Ray
    # actor, a SuperNode, anything else on the machine) holds a core: a 0.5 s run then takes 10-20 s.
    "threads": 1,
}


def tiny_scenario(**overrides):
    """TINY with nested overrides, e.g. tiny_scenario(policy={"name": "fixed", "rank": 2})."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return scenario_from_dict(raw, "test scenario")


@pytest.fixture
def tiny():
    return tiny_scenario


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """A four-class slice of BANKING77, so that every env episode (new seed = new runtime) tokenises in milliseconds."""
    from fedsim.data import EMBEDDED

    root = tmp_path_factory.mktemp("data")
    with (EMBEDDED["banking77"] / "train.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    classes = sorted({r["category"] for r in rows})[:4]
    for name, per_class, offset in (("train.csv", 24, 0), ("test.csv", 8, 24)):
        chosen = [r for c in classes for r in [x for x in rows if x["category"] == c][offset : offset + per_class]]
        with (root / name).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["text", "category"])
            writer.writeheader()
            writer.writerows(chosen)
    return str(root)


def save_tiny_decoders(root, auto_class) -> dict[str, str]:
    """Tiny random OPT, GPT-2 and Llama (2 layers, width 32) with MiniLM's tokenizer, saved by `auto_class`
    (transformers' AutoModel, or AutoModelForCausalLM to keep the LM head) under `root`: {family: directory}."""
    import torch
    from transformers import GPT2Config, LlamaConfig, OPTConfig

    from fedsim.hub import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    common = dict(vocab_size=tokenizer.vocab_size, **ids)
    configs = {
        "opt": OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, max_position_embeddings=128, word_embed_proj_dim=32, **common),
        "gpt2": GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, **common),
        "llama": LlamaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, **common
        ),
    }
    paths = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        auto_class.from_config(config).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


@pytest.fixture
def one_torch_thread():
    """Tiny networks: one thread avoids spin-waiting on a busy machine (minutes instead of seconds)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Under pytest-xdist (`pytest -n 2 --dist loadgroup`; `make test` runs serially) each group runs on one worker, one test after another:
# the tests that start Ray (a check that no Ray process is left must see only its own), and those that share the
# module's standing federation of SuperNodes. Everything else spreads over both workers.
PROCESS_GROUPS = {"flower": "ray", "ray": "ray", "deploy": "deploy"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker, group in PROCESS_GROUPS.items():
            if item.get_closest_marker(marker):
                item.add_marker(pytest.mark.xdist_group(group))
                break
