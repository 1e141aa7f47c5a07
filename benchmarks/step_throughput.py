"""Local-training throughput: dynamic padding against fixed padding to 64 tokens.

Runs the simulator's own training step (PEFT LoRA r=8 on query/value + head,
Adam) on BANKING77 batches and prints real (non-pad) and padded tokens per
second for each padding mode.

    .venv/bin/python benchmarks/step_throughput.py [--backbone minilm] [--steps 30] [--batch 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from fedsim.adapter_state import load_payload, truncate
from fedsim.config import scenario_from_dict
from fedsim.runtime import get_runtime


def measure(runtime, batches, pad_to):
    model = runtime.model
    optimizer = torch.optim.Adam(model.lora_parameters() + model.head_parameters(), lr=1e-3)
    real = padded = 0
    for i, idx in enumerate(batches):
        if i == 2:  # two warm-up steps
            start, real, padded = time.perf_counter(), 0, 0
        batch = runtime.train.batch(idx, pad_to=pad_to)
        logits = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = F.cross_entropy(logits, batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        real += int(batch["attention_mask"].sum())
        padded += batch["input_ids"].numel()
    elapsed = time.perf_counter() - start
    return real / elapsed, padded / elapsed, elapsed / (len(batches) - 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    scenario = scenario_from_dict({"model": {"backbone": args.backbone}})
    runtime = get_runtime(scenario)
    load_payload(runtime.model, truncate(runtime.initial_state, [8] * runtime.n_layers))
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(runtime.train), args.batch, replace=False) for _ in range(args.steps + 2)]
    print(f"backbone={args.backbone} batch={args.batch} steps={args.steps} threads={torch.get_num_threads()}")
    print(f"{'padding':<10} {'real tok/s':>11} {'padded tok/s':>13} {'s/step':>8}")
    results = {}
    for label, pad_to in (("dynamic", None), ("fixed-64", 64)):
        real, padded, step = measure(runtime, batches, pad_to)
        results[label] = real
        print(f"{label:<10} {real:>11.0f} {padded:>13.0f} {step:>8.3f}")
    print(f"dynamic / fixed-64 real-token speed-up: {results['dynamic'] / results['fixed-64']:.2f}x")


if __name__ == "__main__":
    main()
