"""Local training of one client, and the server's evaluation of the global model."""

from __future__ import annotations

import numpy as np
import torch

from fedsim.adapter_state import load_payload, state_from_model, truncate
from fedsim.adapters import adapter_kind
from fedsim.aggregators import wants_fisher
from fedsim.algorithms.local import LocalAlgorithm
from fedsim.batches import client_batches
from fedsim.local_loop import FisherMeter, local_loop
from fedsim.runtime import Runtime, batches_by_length
from fedsim.sensitivity import SensitivityMeter, sensitivity_betas

EVAL_BATCH = 128


def local_train(runtime: Runtime, payload: dict[str, np.ndarray], client_id: int, server_round: int) -> tuple[dict[str, np.ndarray], dict]:
    """Train one client from the received payload as its adapter kind does (`fedsim.adapters`); return its upload
    and metrics: `train_lora` below, or nano's split computation (`fedsim.nano.split_train`)."""
    return adapter_kind(runtime.scenario).train_fn()(runtime, payload, client_id, server_round)


def train_lora(runtime: Runtime, payload: dict[str, np.ndarray], client_id: int, server_round: int) -> tuple[dict[str, np.ndarray], dict]:
    """The `lora` kind's local training at the payload's ranks: only components inside each layer's rank (and the
    head) are trained and sent back."""
    scenario = runtime.scenario
    cfg = scenario.train
    model = runtime.model
    ranks = load_payload(model, payload)
    lora = [p for i, r in enumerate(ranks) if r > 0 for p in model.factor(i)]
    groups = [{"params": model.head_parameters(), "lr": cfg.head_lr}, {"params": lora, "lr": cfg.lr}]
    # An LM client sent rank 0 everywhere has nothing to train; Adam refuses an empty list, so it steps a placeholder.
    optimizer = torch.optim.Adam([g for g in groups if g["params"]] or [{"params": [torch.zeros(1, requires_grad=True)]}])
    trained = {f"{side}.{i}": (p, cfg.lr) for i, r in enumerate(ranks) if r > 0 for side, p in zip("AB", model.factor(i))}
    trained |= {key: (p, cfg.head_lr) for key, p in model.head_tensors().items()}
    algorithm = LocalAlgorithm(scenario.algorithm, trained, [payload], stacked=False)

    betas = sensitivity_betas(scenario)
    factors = [model.factor(i) for i in range(len(model.layers))]
    sensitivity = SensitivityMeter(factors, *betas) if betas else None
    fisher = FisherMeter(factors) if wants_fisher(scenario) else None
    losses, tokens = [], 0

    def backward(indices):
        nonlocal tokens
        batch = runtime.batch("train", indices)
        labels = batch.pop("labels")
        with runtime.autocast():
            logits = model.logits(**batch)
        loss = runtime.task.loss(logits.float(), labels)
        if loss.requires_grad:  # False only when nothing is trained (an LM client at rank 0)
            loss.backward()
        losses.append(loss.item())
        tokens += int(batch["attention_mask"].sum())

    meters = [m for m in (fisher, sensitivity) if m is not None]
    steps = local_loop(optimizer, client_batches(runtime, client_id, server_round), backward, meters, algorithm)
    upload = truncate(state_from_model(model), ranks) | algorithm.upload(0, ranks)
    if fisher is not None:
        fisher.add_to(upload, steps)
    metrics = {"num-examples": len(runtime.partitions[client_id]), "train-loss": float(np.mean(losses)), "tokens": tokens}
    if sensitivity is not None:
        metrics["sensitivity"] = sensitivity.scores().tolist()
    return upload, metrics


@torch.no_grad()
def evaluate(runtime: Runtime, payload: dict[str, np.ndarray], indices: np.ndarray, split: str = "test") -> tuple[float, float]:
    """Mean loss and the task's metric (`Task.score`: accuracy for classification) of the adapter in `payload` on
    examples `indices` of `split` ('test', or 'train' for the validation examples held out of it)."""
    load_payload(runtime.model, payload)
    return runtime.task.evaluate(runtime.model, batches_by_length(runtime, split, indices, EVAL_BATCH), runtime.autocast)
