"""Cohort-batched local training: the round's selected clients train together.

The shared frozen backbone runs on every client's batch at once: each step's
rows (all clients') are sorted by length and cut into forward passes of similar
length (`length_chunks`), so there is almost no padding, and each
row gets its own client's LoRA factors and head (two dense matmuls over all
clients' factors side by side, see `_cohort_lora`). The loss is the sum of the
clients' own mean losses, and the clients' parameters are disjoint, so each
client gets exactly the gradient it would get alone. Adam is elementwise, so
one Adam over the stacked parameters is each client's own Adam. Batches, ranks
and seeds are those of `training.local_train`; results agree with training the
clients one after another within float tolerance (only padding widths and the
order of float sums differ).

Flower stays the orchestrator: the server sends the round as one `train.cohort`
message (`pack`), the ClientApp trains the cohort, and `unpack` turns the reply
back into one reply per client for the strategy.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedsim.adapter_state import payload_ranks
from fedsim.algorithms.local import LocalAlgorithm
from fedsim.batches import client_batches
from fedsim.local_loop import local_loop
from fedsim.payload import HEAD_BIAS, HEAD_WEIGHT, a_key, b_key
from fedsim.runtime import Runtime
from fedsim.sensitivity import SensitivityMeter, sensitivity_betas

COHORT_TYPE = f"{MessageType.TRAIN}.cohort"


def cohort_train(runtime: Runtime, payloads: list[dict[str, np.ndarray]], client_ids: list[int], server_round: int) -> list[tuple[dict[str, np.ndarray], dict]]:
    cfg = runtime.scenario.train
    model = runtime.model
    n_clients, n_layers = len(payloads), runtime.n_layers
    ranks = np.array([payload_ranks(p, n_layers) for p in payloads])  # [clients, layers]
    a_stack, b_stack, masks = _stacked_factors(runtime, payloads, ranks)
    # Every client's head (classification; none for a causal LM), stacked: [clients, ...] per payload key.
    heads = {key: torch.stack([torch.from_numpy(p[key]) for p in payloads]).to(runtime.device).requires_grad_() for key in model.head_tensors()}
    groups = [{"params": list(heads.values()), "lr": cfg.head_lr}, {"params": a_stack + b_stack, "lr": cfg.lr}]
    # Fused Adam on a GPU: one kernel for all stacks instead of a few per tensor (launches bound small models there).
    optimizer = torch.optim.Adam([g for g in groups if g["params"]], fused=runtime.device.type == "cuda" or None)
    trained = {a_key(i): (a, cfg.lr) for i, a in enumerate(a_stack)} | {b_key(i): (b, cfg.lr) for i, b in enumerate(b_stack)}
    trained |= {key: (stack, cfg.head_lr) for key, stack in heads.items()}
    algorithm = LocalAlgorithm(runtime.scenario.algorithm, trained, payloads, stacked=True)

    betas = sensitivity_betas(runtime.scenario)
    meter = SensitivityMeter(list(zip(a_stack, b_stack)), *betas, stacked=True) if betas else None
    steps = [list(client_batches(runtime, cid, server_round)) for cid in client_ids]
    losses = np.zeros((n_clients, cfg.local_steps))
    tokens = np.zeros(n_clients, dtype=np.int64)
    with _cohort_lora(model, a_stack, b_stack, masks) as owner_of_rows:

        def backward(step: int) -> None:
            _accumulate_step(runtime, [steps[c][step] for c in range(n_clients)], heads, owner_of_rows, losses[:, step], tokens)

        local_loop(optimizer, range(cfg.local_steps), backward, [meter] if meter is not None else [], algorithm)

    sensitivity = meter.scores() if meter is not None else None
    # One device-to-host copy per stack, not per client and layer (each copy is a device sync).
    a_host, b_host = [a.detach().cpu().numpy() for a in a_stack], [b.detach().cpu().numpy() for b in b_stack]
    heads_host = {key: stack.detach().cpu().numpy() for key, stack in heads.items()}
    results = []
    for c, cid in enumerate(client_ids):
        upload = {}
        for i in range(n_layers):
            r = ranks[c, i]
            if r:
                upload[a_key(i)] = a_host[i][c, :r].copy()
                upload[b_key(i)] = b_host[i][c, :, :r].copy()
        upload |= {key: stack[c].copy() for key, stack in heads_host.items()}
        upload |= algorithm.upload(c, ranks[c])
        metrics = {"num-examples": len(runtime.partitions[cid]), "train-loss": float(losses[c].mean()), "tokens": int(tokens[c])}
        if meter is not None:
            metrics["sensitivity"] = sensitivity[c].tolist()
        results.append((upload, metrics))
    return results


def _stacked_factors(runtime: Runtime, payloads: list[dict[str, np.ndarray]], ranks: np.ndarray):
    """Per layer, every client's A [clients, R, in] and B [clients, out, R] zero-padded to max_rank (trainable),
    and the rank mask [clients, R] that keeps the padding out of the forward pass."""
    model, device, max_rank = runtime.model, runtime.device, runtime.model.max_rank
    a_stack, b_stack, masks = [], [], []
    for i in range(runtime.n_layers):
        a_ref, b_ref = model.factor(i)
        a = torch.zeros((len(payloads), max_rank, a_ref.shape[1]), device=device)
        b = torch.zeros((len(payloads), b_ref.shape[0], max_rank), device=device)
        for c, payload in enumerate(payloads):
            r = ranks[c, i]
            if r:
                a[c, :r] = torch.from_numpy(payload[a_key(i)])
                b[c, :, :r] = torch.from_numpy(payload[b_key(i)])
        a_stack.append(a.requires_grad_())
        b_stack.append(b.requires_grad_())
        masks.append(torch.as_tensor(np.arange(max_rank)[None, :] < ranks[:, i, None], dtype=torch.float32, device=device))
    return a_stack, b_stack, masks


def _accumulate_step(runtime: Runtime, groups: list[np.ndarray], heads: dict, owner_of_rows, losses: np.ndarray, tokens: np.ndarray) -> None:
    """One local step of every client at once: each client's batch (`groups[c]`, row indices) in
    length-sorted passes, gradients accumulated; adds each client's mean loss to `losses[c]` and its real
    tokens to `tokens[c]`. With `heads` (classification) each row's logits come from its own client's head;
    without (a causal LM), from the model's own LM head."""
    model, device = runtime.model, runtime.device
    rows = np.concatenate(groups)
    owner = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    weight = torch.from_numpy(np.concatenate([np.full(len(g), 1.0 / len(g)) for g in groups])).float().to(device)
    for chunk in length_chunks(runtime.train.lengths[rows], *PASS_SIZING[device.type == "cuda"]):
        batch = runtime.batch("train", rows[chunk])
        labels = batch.pop("labels")
        chunk_owner = torch.from_numpy(owner[chunk]).to(device)
        owner_of_rows(owner[chunk])
        with runtime.autocast():
            if heads:
                pooled = model.classifier.features(**batch)
                # Every client's head on every row is only rows x clients x classes; keep each row's own.
                logits_all = torch.einsum("nh,coh->nco", pooled, heads[HEAD_WEIGHT]) + heads[HEAD_BIAS]
                logits = logits_all[torch.arange(len(chunk)), chunk_owner].float()
            else:
                logits = model.logits(**batch).float()
        per_row = runtime.task.loss(logits, labels, reduction="none") * weight[chunk]
        per_row.sum().backward()
        np.add.at(losses, owner[chunk], per_row.detach().cpu().numpy())
        np.add.at(tokens, owner[chunk], batch["attention_mask"].sum(1).cpu().numpy())


CHUNK_TOKENS = 4096  # the most padded tokens in one forward pass (bounds activation memory)
PASS_OVERHEAD_TOKENS = 128  # a pass's fixed cost (per-op dispatch, hooks), in padded-token equivalents
# On a GPU a pass costs its thousands of kernel launches (~0.25 s at OPT-1.3B's depth, benchmarks/README.md,
# "LLM scale on a GPU") whatever its size, while padding is nearly free: fewer, larger passes.
GPU_CHUNK_TOKENS = 16384
GPU_PASS_OVERHEAD_TOKENS = 8192
PASS_SIZING = {False: (CHUNK_TOKENS, PASS_OVERHEAD_TOKENS), True: (GPU_CHUNK_TOKENS, GPU_PASS_OVERHEAD_TOKENS)}


def length_chunks(row_lengths: np.ndarray, max_padded_tokens: int = CHUNK_TOKENS, pass_overhead: int = PASS_OVERHEAD_TOKENS) -> list[np.ndarray]:
    """Split a step's rows into forward passes of similar length, as cheaply as possible.

    Rows are sorted by length (stable, so the split is deterministic) and cut into contiguous runs
    by dynamic programming, minimising the padded tokens computed plus `pass_overhead` per
    pass, with no pass above `max_padded_tokens` (a longer single row gets a pass of its own).
    The loss is a sum over rows, so accumulating the passes' gradients gives the gradient of one
    pass over all rows.
    """
    order = np.argsort(row_lengths, kind="stable")
    sorted_lengths = row_lengths[order].astype(np.int64)
    n = len(order)
    best = np.zeros(n + 1)  # best[j]: cheapest split of the first j sorted rows
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        starts = np.arange(end)
        padded = (end - starts) * sorted_lengths[end - 1]
        cost = best[:end] + padded + pass_overhead
        cost[(padded > max_padded_tokens) & (starts < end - 1)] = np.inf
        cut[end] = int(np.argmin(cost))
        best[end] = cost[cut[end]]
    chunks, end = [], n
    while end > 0:
        chunks.append(order[cut[end] : end])
        end = cut[end]
    return chunks[::-1]


@contextmanager
def _cohort_lora(model, a_stack, b_stack, masks):
    """Swap PEFT's single-client LoRA path for per-row factors on every adapted layer.

    Yields a setter for the client that owns each row of the next forward pass (a numpy array). Row n gets
    scaling * B_c (m_c * (A_c x_n)) with c its owner. As two dense matmuls over all clients' factors
    side by side, [A_1; ...; A_C] and [B_1 ... B_C], with every other client's block of the low-rank
    activation zeroed: the zeros add nothing to the result or the gradients, and two large matmuls
    are far cheaper on a CPU than one tiny matmul per row.
    """
    owner_onehot = torch.zeros(0)

    def set_owner(rows_owner: np.ndarray) -> None:
        nonlocal owner_onehot
        # Built on the host and copied: F.one_hot on a GPU checks its input's range, a device sync.
        onehot = np.zeros((len(rows_owner), len(a_stack[0]) if a_stack else 0), dtype=np.float32)
        onehot[np.arange(len(rows_owner)), rows_owner] = 1.0
        owner_onehot = torch.from_numpy(onehot).to(a_stack[0].device if a_stack else "cpu", non_blocking=True)

    handles = []
    for i, (_, layer) in enumerate(model.layers):
        scaling = layer.scaling["default"]

        def add_delta(_module, inputs, output, i=i, scaling=scaling):
            n_clients, rank, fan_in = a_stack[i].shape
            a_all = a_stack[i].reshape(n_clients * rank, fan_in)
            b_all = b_stack[i].permute(1, 0, 2).reshape(-1, n_clients * rank)
            keep = (owner_onehot[:, :, None] * masks[i][None]).reshape(len(owner_onehot), 1, n_clients * rank)
            delta = ((inputs[0] @ a_all.T) * keep) @ b_all.T
            return output + (delta * scaling).to(output.dtype)

        layer.enable_adapters(False)
        handles.append(layer.base_layer.register_forward_hook(add_delta))
    try:
        yield set_owner
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
