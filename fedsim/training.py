"""Local training of one client, and the server's evaluation of the global model."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedsim.adapter_state import load_payload, state_from_model, truncate
from fedsim.adapters import adapter_kind
from fedsim.aggregators import wants_fisher
from fedsim.algorithms.local import LocalAlgorithm
from fedsim.batches import client_batches
from fedsim.payload import HEAD_BIAS, HEAD_WEIGHT
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
    groups = [{"params": model.head_parameters(), "lr": cfg.head_lr}]
    if lora:
        groups.append({"params": lora, "lr": cfg.lr})
    optimizer = torch.optim.Adam(groups)
    trained = {f"{side}.{i}": (p, cfg.lr) for i, r in enumerate(ranks) if r > 0 for side, p in zip("AB", model.factor(i))}
    trained |= {HEAD_WEIGHT: (model.head.weight, cfg.head_lr), HEAD_BIAS: (model.head.bias, cfg.head_lr)}
    algorithm = LocalAlgorithm(scenario.algorithm, trained, [payload], stacked=False)

    betas = sensitivity_betas(scenario)
    meter = SensitivityMeter([model.factor(i) for i in range(len(model.layers))], *betas) if betas else None
    want_fisher = wants_fisher(scenario)
    fisher = [(torch.zeros_like(a), torch.zeros_like(b)) for a, b in map(model.factor, range(len(model.layers)))] if want_fisher else []
    losses, tokens, steps = [], 0, 0
    for indices in client_batches(runtime, client_id, server_round):
        batch = runtime.batch("train", indices)
        labels = batch.pop("labels")
        with runtime.autocast():
            logits = model.model(**batch)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for i, (f_a, f_b) in enumerate(fisher):  # squared gradients, for Fisher merging (empty unless wanted)
            a, b = model.factor(i)
            if a.grad is not None:
                f_a += a.grad.detach().float() ** 2
                f_b += b.grad.detach().float() ** 2
        if meter is not None:
            meter.update()
        algorithm.after_backward()  # after the Fisher and sensitivity meters: they measure the loss alone
        optimizer.step()
        algorithm.after_step()
        losses.append(loss.item())
        tokens += int(batch["attention_mask"].sum())
        steps += 1
    upload = truncate(state_from_model(model), ranks) | algorithm.upload(0, ranks)
    if want_fisher:
        from fedsim.nano import add_fisher

        add_fisher(upload, fisher, steps)
    metrics = {"num-examples": len(runtime.partitions[client_id]), "train-loss": float(np.mean(losses)), "tokens": tokens}
    if meter is not None:
        metrics["sensitivity"] = meter.scores().tolist()
    return upload, metrics


@torch.no_grad()
def evaluate(runtime: Runtime, payload: dict[str, np.ndarray], indices: np.ndarray, split: str = "test") -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the adapter in `payload` on examples `indices` of `split`
    ('test', or 'train' for the validation examples held out of it)."""
    model = runtime.model
    load_payload(model, payload)
    total_loss, correct = 0.0, 0
    for batch in batches_by_length(runtime, split, indices, EVAL_BATCH):
        labels = batch.pop("labels")
        with runtime.autocast():
            logits = model.model(**batch).float()
        total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(-1) == labels).sum())
    return total_loss / len(indices), correct / len(indices)
