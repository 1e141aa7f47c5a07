"""LLM scale on one GPU (issue 16): fedsim's cohort round against a plain per-client PEFT loop and the
raw batched limit, measured in one run on the same GPU.

The setting of the issue: OPT-1.3B's shape with random weights (exact for speed; no weights can be
downloaded here), bf16, LoRA r=8 on q_proj/v_proj, BANKING77 texts (8-48 tokens under a word-level
tokenizer built from the data, SST-2-like lengths), one round = 8 clients x 10 steps x batch 16.

1. **raw**: one shared base with one PEFT LoRA, batches of 128 rows (8 clients x 16) padded to their
   longest row, forward + backward + Adam. Real (non-pad) tokens per second: the limit a batched
   implementation can reach.
2. **plain**: the loop users write without fedsim (FlowerTune style, without Ray, which only adds to
   it): per client a fresh copy of the base, `get_peft_model`, Adam, 10 steps of 16 rows padded to 64
   tokens, one client after another. Seconds per round.
3. **fedsim**: `fedsim.run` with `device: cuda`, `train.precision: bf16`, `train.engine: cohort`, the
   inline engine, 8 clients per round (rounds 2.. timed: round 1 includes allocation and warm-up).
4. **fedsim, 64 clients per round**: one round, peak GPU memory against the base model's bytes.
5. **the quickstart at MiniLM's shape** (`--part minilm`): random weights of all-MiniLM-L6-v2's shape
   (its weights are not on the GPU machine), the quickstart's settings, fp32, seconds per round on
   `--device`; run it once with cuda and once with cpu to compare.

    python benchmarks/gpu_round.py --out /tmp/gpu_round           # on a GPU machine
    python benchmarks/gpu_round.py --shape tiny --device cpu      # a smoke test of the script anywhere
    python benchmarks/gpu_round.py --part minilm --device cuda    # then --device cpu: the quickstart's round

It prints a table and writes `gpu_round.json` beside the saved model.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import csv
import json
import pstats
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / "fedsim" / "data" / "banking77"
SHAPES = {
    "opt-1.3b": dict(hidden_size=2048, ffn_dim=8192, num_hidden_layers=24, num_attention_heads=32, word_embed_proj_dim=2048, max_position_embeddings=2048),
    "tiny": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=2, word_embed_proj_dim=64, max_position_embeddings=128),
}


def texts() -> list[str]:
    with open(DATA / "train.csv", newline="") as fh:
        return [row["text"] for row in csv.DictReader(fh)]


def save_tokenizer(directory: Path) -> None:
    """A word-level tokenizer of BANKING77 (no hub access here), loadable by path."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts(), trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(directory)


def save_backbone(directory: Path, shape: str, device: str) -> None:
    """A random-weight OPT of the given shape and the BANKING77 tokenizer, loadable by path."""
    from transformers import AutoModel, OPTConfig

    config = OPTConfig(vocab_size=50272, pad_token_id=0, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory)
    save_tokenizer(directory)
    del model


def save_minilm_shape(directory: Path) -> None:
    """A random BERT of all-MiniLM-L6-v2's shape with a word-level tokenizer of BANKING77."""
    from transformers import BertConfig, BertModel

    save_tokenizer(directory)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, max_position_embeddings=512)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(directory)


def minilm_round(out: Path, device: str, rounds: int) -> dict:
    import fedsim

    directory = out / "minilm-shape-random"
    if not (directory / "config.json").is_file():
        save_minilm_shape(directory)
    run = fedsim.run(
        "scenarios/quickstart.yaml",
        {"model.backbone": str(directory), "device": device, "engine": "inline", "rounds": rounds, "data.eval_full_final": False},
        out=out / f"minilm-{device}",
        overwrite=True,
    )
    walls = np.loadtxt(run.path / "timings.csv", delimiter=",", skiprows=1, usecols=1, ndmin=1)
    return {"minilm_device": device, "minilm_round_s": float(np.mean(walls[1:])), "minilm_round_s_all": walls.tolist()}


def token_batches(directory: Path, rows: int, steps: int, seed: int = 0) -> list[list[list[int]]]:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(directory))(texts())["input_ids"]
    rng = np.random.default_rng(seed)
    return [[ids[i] for i in rng.choice(len(ids), rows, replace=False)] for _ in range(steps)]


def mean_length(directory: Path) -> float:
    from transformers import AutoTokenizer

    return float(np.mean([min(len(ids), 64) for ids in AutoTokenizer.from_pretrained(str(directory))(texts())["input_ids"]]))


def pad(batch: list[list[int]], device, width: int | None = None):
    width = width or max(map(len, batch))
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(batch):
        seq = seq[:width]
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def lora_model(base, device):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])).to(device)


def train_steps(model, head, batches, device, width=None) -> int:
    """Classification steps (last-token pooling, as fedsim's decoders) with Adam; returns the real tokens seen."""
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=2e-3)
    tokens = 0
    for batch in batches:
        ids, mask = pad(batch, device, width)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = hidden[torch.arange(len(ids), device=device), mask.sum(1) - 1].float()
            loss = torch.nn.functional.cross_entropy(head(pooled), torch.zeros(len(ids), dtype=torch.long, device=device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tokens += int(mask.sum())
    return tokens


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/gpu_round", help="where the random-weight model and the runs go")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="opt-1.3b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="fedsim rounds at --clients per round (the first is not timed)")
    parser.add_argument("--big-cohort", type=int, default=64, help="clients in the one-round memory run (0 = skip)")
    parser.add_argument("--part", choices=["llm", "minilm"], default="llm", help="llm: parts 1-4; minilm: part 5")
    parser.add_argument("--profile", action="store_true", help="write a cProfile of fedsim's 8-client run to OUT/profile.txt")
    args = parser.parse_args()
    if args.part == "minilm":
        result = minilm_round(Path(args.out), args.device, args.rounds)
        print(json.dumps(result))
        return
    from transformers import AutoModel

    import fedsim

    device = torch.device(args.device)
    out = Path(args.out)
    model_dir = out / f"{args.shape}-random"
    if not (model_dir / "config.json").is_file():
        save_backbone(model_dir, args.shape, args.device)
    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "shape": args.shape}

    def save(results: dict) -> None:  # after every part, so a run cut short still leaves its figures
        (out / "gpu_round.json").write_text(json.dumps(results, indent=2))

    rows = args.clients * args.batch

    # 1. raw batched limit
    base = AutoModel.from_pretrained(str(model_dir), dtype=torch.bfloat16).to(device)
    base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    model = lora_model(base, device)
    head = torch.nn.Linear(base.config.hidden_size, 2).to(device)
    train_steps(model, head, token_batches(model_dir, rows, 3, seed=1), device)  # warm-up
    batches = token_batches(model_dir, rows, args.steps, seed=2)
    sync(device)
    start = time.perf_counter()
    tokens = train_steps(model, head, batches, device)
    sync(device)
    raw_s = time.perf_counter() - start
    results["raw_tokens_per_s"] = tokens / raw_s
    results["raw_step_ms"] = 1000 * raw_s / args.steps
    del model, head, base
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # 2. plain per-client loop: a fresh copy of the base per client, padded to 64
    pristine = AutoModel.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    client_batches = [token_batches(model_dir, args.batch, args.steps, seed=10 + c) for c in range(args.clients)]
    sync(device)
    start = time.perf_counter()
    plain_tokens = 0
    for c in range(args.clients):
        model = lora_model(copy.deepcopy(pristine), device)
        head = torch.nn.Linear(pristine.config.hidden_size, 2).to(device)
        plain_tokens += train_steps(model, head, client_batches[c], device, width=64)
        del model, head
    sync(device)
    results["plain_round_s"] = time.perf_counter() - start
    results["plain_tokens_per_s"] = plain_tokens / results["plain_round_s"]
    del pristine
    save(results)

    # 3. fedsim's round, and 4. a 64-client round's memory
    common = {
        "model.backbone": str(model_dir),
        "device": args.device,
        "train.precision": "bf16",
        "train.engine": "cohort",
        "engine": "inline",
        "adapter.target_modules": ["q_proj", "v_proj"],
        "adapter.max_rank": 8,
        "train.local_steps": args.steps,
        "train.batch_size": args.batch,
        "data.eval_samples": 64,
        "data.eval_full_final": False,
        "clients.num_clients": max(args.clients, args.big_cohort, 20),
    }
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    run = fedsim.run("scenarios/quickstart.yaml", {**common, "rounds": args.rounds, "clients.per_round": args.clients}, out=out / "fedsim", overwrite=True)
    if profiler is not None:
        profiler.disable()
        with open(out / "profile.txt", "w") as fh:
            pstats.Stats(profiler, stream=fh).sort_stats("cumulative").print_stats(60)
    walls = np.loadtxt(run.path / "timings.csv", delimiter=",", skiprows=1, usecols=1, ndmin=1)
    results["fedsim_round_s"] = float(np.mean(walls[1:])) if len(walls) > 1 else float(walls[0])
    results["fedsim_round_s_all"] = walls.tolist()
    save(results)
    if args.big_cohort:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        big = fedsim.run("scenarios/quickstart.yaml", {**common, "rounds": 1, "clients.per_round": args.big_cohort}, out=out / "fedsim64", overwrite=True)
        results["big_cohort_clients"] = args.big_cohort
        results["big_cohort_round_s"] = float(np.loadtxt(big.path / "timings.csv", delimiter=",", skiprows=1, usecols=1, ndmin=1)[0])
        if device.type == "cuda":
            results["big_cohort_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    results["base_gib"] = base_bytes / 2**30
    # fedsim's clients draw their own rows; their real tokens per round are rows x the data's mean length
    round_tokens = args.clients * args.steps * args.batch * mean_length(model_dir)
    results["speedup_vs_plain"] = results["plain_round_s"] / results["fedsim_round_s"]
    results["fedsim_tokens_per_s"] = round_tokens / results["fedsim_round_s"]
    results["fraction_of_raw"] = results["fedsim_tokens_per_s"] / results["raw_tokens_per_s"]
    save(results)
    for key, value in results.items():
        print(f"{key:>24}: {value:.3f}" if isinstance(value, float) else f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
