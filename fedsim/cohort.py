"""Cohort-batched local training: the round's selected clients train together.

One forward pass runs the shared frozen backbone on every client's batch at
once; each client's LoRA factors and head are applied to its own rows with
batched matmuls (as multi-LoRA serving does). The loss is the sum of the
clients' own mean losses, and the clients' parameters are disjoint, so each
client gets exactly the gradient it would get alone. Adam is elementwise, so
one Adam over the stacked parameters is each client's own Adam. Batches, ranks
and seeds are those of `training.local_train`; results agree with training the
clients one after another within float tolerance (only the padding width of the
shared batch differs).

Flower stays the orchestrator: the server sends the round as one `train.cohort`
message (`pack`), the ClientApp trains the cohort, and `unpack` turns the reply
back into one reply per client for the strategy.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedsim.adapter_state import HEAD_KEYS, payload_ranks
from fedsim.runtime import Runtime
from fedsim.training import client_batches

COHORT_TYPE = f"{MessageType.TRAIN}.cohort"


def cohort_train(
    runtime: Runtime, payloads: list[dict[str, np.ndarray]], client_ids: list[int], server_round: int
) -> list[tuple[dict[str, np.ndarray], dict]]:
    cfg = runtime.scenario.train
    model = runtime.model
    n_clients, n_layers, max_rank = len(payloads), runtime.n_layers, model.max_rank
    ranks = np.array([payload_ranks(p, n_layers) for p in payloads])  # [clients, layers]

    a_stack, b_stack, masks = [], [], []
    for i in range(n_layers):
        a_ref, b_ref = model.factor(i)
        a = torch.zeros((n_clients, max_rank, a_ref.shape[1]))
        b = torch.zeros((n_clients, b_ref.shape[0], max_rank))
        for c, payload in enumerate(payloads):
            r = ranks[c, i]
            if r:
                a[c, :r] = torch.from_numpy(payload[f"A.{i}"])
                b[c, :, :r] = torch.from_numpy(payload[f"B.{i}"])
        a_stack.append(a.requires_grad_())
        b_stack.append(b.requires_grad_())
        masks.append(torch.as_tensor(np.arange(max_rank)[None, :] < ranks[:, i, None], dtype=torch.float32))
    head_w = torch.stack([torch.from_numpy(p["head.weight"]) for p in payloads]).requires_grad_()
    head_b = torch.stack([torch.from_numpy(p["head.bias"]) for p in payloads]).requires_grad_()
    optimizer = torch.optim.Adam([{"params": [head_w, head_b], "lr": cfg.head_lr}, {"params": a_stack + b_stack, "lr": cfg.lr}])

    steps = [list(client_batches(runtime, cid, server_round)) for cid in client_ids]
    losses = np.zeros((n_clients, cfg.local_steps))
    tokens = np.zeros(n_clients, dtype=np.int64)
    with _cohort_lora(model, a_stack, b_stack, masks, n_clients):
        for step in range(cfg.local_steps):
            groups = [steps[c][step] for c in range(n_clients)]
            group = max(len(g) for g in groups)
            # Equal-sized row groups for the batched matmuls: short groups repeat a row with zero loss weight.
            rows = np.concatenate([np.resize(g, group) for g in groups])
            weight = torch.tensor([1.0 / len(g) if k < len(g) else 0.0 for g in groups for k in range(group)])
            batch = runtime.batch("train", rows)
            labels = batch.pop("labels")
            with runtime.autocast():
                pooled = model.classifier.features(**batch).view(n_clients, group, -1)
                logits = torch.baddbmm(head_b.unsqueeze(1), pooled, head_w.transpose(1, 2)).float()
            per_row = F.cross_entropy(logits.reshape(n_clients * group, -1), labels, reduction="none")
            loss = (per_row * weight).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[:, step] = (per_row * weight).detach().view(n_clients, group).sum(1).numpy()
            tokens += np.array([int(batch["attention_mask"][c * group : c * group + len(groups[c])].sum()) for c in range(n_clients)])

    results = []
    for c, cid in enumerate(client_ids):
        upload = {}
        for i in range(n_layers):
            r = ranks[c, i]
            if r:
                upload[f"A.{i}"] = a_stack[i][c, :r].detach().numpy().copy()
                upload[f"B.{i}"] = b_stack[i][c, :, :r].detach().numpy().copy()
        upload["head.weight"] = head_w[c].detach().numpy().copy()
        upload["head.bias"] = head_b[c].detach().numpy().copy()
        metrics = {"num-examples": len(runtime.partitions[cid]), "train-loss": float(losses[c].mean()), "tokens": int(tokens[c])}
        results.append((upload, metrics))
    return results


@contextmanager
def _cohort_lora(model, a_stack, b_stack, masks, n_clients):
    """Swap PEFT's single-client LoRA path for per-client batched factors on every adapted layer."""
    handles = []
    for i, (_, layer) in enumerate(model.layers):
        scaling = layer.scaling["default"]

        def add_delta(_module, inputs, output, i=i, scaling=scaling):
            x = inputs[0]
            x = x.reshape(n_clients, -1, x.shape[-1])
            low = torch.bmm(x, a_stack[i].transpose(1, 2)) * masks[i].unsqueeze(1)
            delta = torch.bmm(low, b_stack[i].transpose(1, 2)) * scaling
            return output + delta.reshape(output.shape).to(output.dtype)

        layer.enable_adapters(False)
        handles.append(layer.base_layer.register_forward_hook(add_delta))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for _, layer in model.layers:
            layer.enable_adapters(True)


# --- one Flower message per cohort ------------------------------------------------------------


def pack(messages: list[Message]) -> Message:
    """The round's per-client train messages as one `train.cohort` message to the first client's node."""
    content = RecordDict()
    client_ids = []
    for message in messages:
        cid = int(message.content["config"]["client-id"])
        client_ids.append(cid)
        content[f"arrays.{cid}"] = message.content["arrays"]
    config = dict(messages[0].content["config"])
    config["client-ids"] = client_ids
    content["config"] = ConfigRecord(config)
    first = messages[0]
    return Message(content, dst_node_id=first.metadata.dst_node_id, message_type=COHORT_TYPE, group_id=first.metadata.group_id)


def unpack(replies: list[Message], messages: list[Message]) -> list[Message]:
    """One reply per original client message, as if each client had answered alone."""
    reply = next(iter(replies), None)
    if reply is None or reply.has_error():
        return [Message(reply.error, reply_to=m) for m in messages] if reply is not None else []
    out = []
    for message in messages:
        cid = int(message.content["config"]["client-id"])
        content = RecordDict({"arrays": reply.content[f"arrays.{cid}"], "metrics": MetricRecord(dict(reply.content[f"metrics.{cid}"]))})
        out.append(Message(content, reply_to=message))
    return out
