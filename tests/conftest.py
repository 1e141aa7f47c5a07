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


def banking77_wordpiece():
    """MiniLM's WordPiece tokenizer cut to the pieces that BANKING77's texts, its intent names and the causal-LM
    prompt use, plus every ASCII character (as a word start and as `##` continuation): ~2,700 of its 30,522 entries.

    Greedy longest-match-first over a vocabulary that keeps every piece of a text's full-vocabulary segmentation
    finds that same segmentation, so these texts tokenise as with MiniLM's; a tiny decoder's embedding and LM head
    over it are 10x smaller (the head over 30,522 tokens was a third of a tiny causal-LM test's time)."""
    import json

    from transformers import BertTokenizer

    from fedsim.data import EMBEDDED
    from fedsim.hub import load_tokenizer

    full = load_tokenizer("minilm")
    texts = [json.dumps(json.load(open(EMBEDDED["banking77"] / "categories.json"))).replace("_", " "), "Query: \nIntent:"]
    for name in ("train.csv", "test.csv"):
        with (EMBEDDED["banking77"] / name).open() as fh:
            texts += [row["text"] for row in csv.DictReader(fh)]
    used = {i for ids in full(texts)["input_ids"] for i in ids} | set(full.all_special_ids)
    ascii_pieces = {p for c in map(chr, range(33, 127)) for p in (c, "##" + c)}
    kept = [token for token, i in sorted(full.get_vocab().items(), key=lambda item: item[1]) if i in used or token in ascii_pieces]
    return BertTokenizer(vocab={token: i for i, token in enumerate(kept)}, do_lower_case=True, model_max_length=full.model_max_length)


def save_tiny_decoders(root, auto_class) -> dict[str, str]:
    """Tiny random OPT, GPT-2 and Llama (2 layers, width 32) with MiniLM's tokenizer cut to BANKING77's pieces,
    saved by `auto_class` (transformers' AutoModel, or AutoModelForCausalLM to keep the LM head) under `root`:
    {family: directory}."""
    import torch
    from transformers import GPT2Config, LlamaConfig, OPTConfig

    tokenizer = banking77_wordpiece()
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


# `make test` runs the suite on two pytest-xdist workers, a module's tests on one worker (`--dist loadfile`): the
# deployment tests then share their module's standing federation, and a Ray cluster test its module's cluster. The
# modules that start processes (minutes each) go first, and the short ones fill in around them (with
# `--no-loadscope-reorder`, which would otherwise order modules by their number of tests). (`--dist loadgroup` with
# xdist_group marks would be finer, but pytest-xdist 3.8 cannot group under pytest 9.2: it renames a test's nodeid,
# which pytest 9.2 no longer lets it change, so every test is scheduled alone.)
# Longest first (measured 2026-11-27: 242, 163, 109, 86, 58, 50 s of test time), so no long module starts last.
PROCESS_MODULES_FIRST = ("test_deploy.py", "test_ray_cluster.py", "test_faults.py", "test_sweep_resume.py", "test_causal_lm.py", "test_golden.py")


def pytest_collection_modifyitems(config, items):
    def module_rank(item) -> int:
        name = item.path.name
        return PROCESS_MODULES_FIRST.index(name) if name in PROCESS_MODULES_FIRST else len(PROCESS_MODULES_FIRST)

    items.sort(key=module_rank)  # stable: each module keeps its own order
