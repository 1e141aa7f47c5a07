r"""NanoAdapter clients (FedNano mode, `adapter.kind: nano`): the backbone stays on the server.

FedNano (arXiv 2506.14824) keeps the large model on the server. A client holds
only its input encoder (here: the token embeddings) and small trainable
NanoAdapters between that encoder and the frozen backbone. For text, one adapter
per input stream (segment 0 and segment 1 of a pair, told apart by
`token_type_ids`):

.. math::
    \tilde h_t = h_t + s\, B_{g(t)} A_{g(t)} h_t,\qquad s = \alpha / R,

where :math:`h_t` is the embedding output of token t, :math:`g(t)` its segment,
:math:`A_g \in \mathbb R^{R\times d}`, :math:`B_g \in \mathbb R^{d\times R}` and
components beyond the round's rank are masked, exactly like LoRA layers. So
`NanoClassifier` exposes LoraClassifier's interface (layers, factor(i),
set_ranks, params_per_rank, head, ...) and payloads, aggregation and rank
policies work unchanged. The fedsim data pipeline holds single texts (BANKING77
is single-segment), so only the segment-0 adapter ever sees tokens; a client
does not upload a stream adapter none of its batches touched (nothing changed).

Split computation (`split_train`), one local step:

1. client: :math:`a = \mathrm{adapter}(\mathrm{embed}(x))`, shape [batch, padded width, d];
2. uplink: `a` goes to the server (a detached tensor: the autograd graph is cut here);
3. server: frozen backbone + head, loss, backward down to :math:`\partial L/\partial a`;
4. downlink: :math:`\partial L/\partial a` goes back; the client runs `a.backward(grad)`.

Both tensors are sent at `quantization.bits_per_param` (quantised with its
rounding when below 32 bits, so the quantisation error is real), and their bytes
are counted from the arrays sent: ``batch x width x d x bits / 8`` (+ a 4-byte
scale per tensor when quantised), with the batch's dynamic padding included.

The head lives on the server: during a round the server trains a per-client copy
of the global head on that client's activations and merges the copies by a
weighted mean (as it merges heads in LoRA mode). It never crosses the air, so it
is neither in the metered uplink nor downlink.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.adapter_state import load_payload, state_from_model, truncate
from fedsim.aggregators import wants_fisher
from fedsim.local_loop import FisherMeter, local_loop
from fedsim.model import RankedLora, SentenceClassifier, build_classifier
from fedsim.payload import FISHER_PREFIX, HEAD_BIAS, HEAD_WEIGHT
from fedsim.sensitivity import SensitivityMeter, sensitivity_betas
from fedsim.types import FedsimError

STREAMS = 2  # segment 0 and segment 1 of a text pair


class NanoAdapter(nn.Module):
    """The residual low-rank term s·B·A·h of one stream (masked to the round's rank)."""

    def __init__(self, hidden: int, max_rank: int, scaling: float):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(max_rank, hidden))
        self.lora_B = nn.Parameter(torch.zeros(hidden, max_rank))  # B = 0: the adapter starts as the identity
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's LoRA initialisation of A
        self.scaling = scaling
        self.register_buffer("mask", torch.ones(max_rank))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.scaling * ((hidden @ self.lora_A.T) * self.mask) @ self.lora_B.T


class NanoEdge(nn.Module):
    """What the client holds: the frozen token embeddings and one NanoAdapter per stream."""

    def __init__(self, embeddings: nn.Module, adapters: nn.ModuleList):
        super().__init__()
        self.embeddings = embeddings
        self.adapters = adapters

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():  # the embeddings are frozen
            hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        segments = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        out = hidden
        for stream, adapter in enumerate(self.adapters):
            selected = segments == stream
            if bool(selected.any()):
                out = out + selected.unsqueeze(-1).to(hidden.dtype) * adapter(hidden)
        return out


class NanoModel(nn.Module):
    """Client edge and server backbone in one module: `forward` is the whole model on one side (evaluation)."""

    def __init__(self, edge: NanoEdge, classifier: SentenceClassifier):
        super().__init__()
        self.edge = edge
        self.classifier = classifier

    def server(self, activations: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The server's part: frozen transformer layers, mean pooling, head."""
        return self.classifier.head(self.classifier.features(attention_mask=attention_mask, prefix_hidden=activations, prefix_layers=0))

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **_) -> torch.Tensor:
        return self.server(self.edge(input_ids, token_type_ids), attention_mask)


class NanoClassifier:
    """FedNano's client/server split behind LoraClassifier's interface (see the module docstring)."""

    def __init__(self, backbone: str, num_labels: int, max_rank: int, alpha: float):
        self.classifier = build_classifier(backbone, num_labels)
        if not self.classifier.supports_prefix():
            raise FedsimError(
                f"model.backbone={backbone!r}: adapter.kind=nano needs a BERT-style encoder (embeddings + encoder.layer); "
                "allowed: 'minilm', 'tiny-random' or such a model, or use adapter.kind=lora"
            )
        for parameter in self.classifier.parameters():
            parameter.requires_grad_(False)
        self.head = self.classifier.head
        for parameter in self.head.parameters():
            parameter.requires_grad_(True)
        hidden = self.classifier.encoder.config.hidden_size
        adapters = nn.ModuleList(NanoAdapter(hidden, max_rank, alpha / max_rank) for _ in range(STREAMS))
        self.edge = NanoEdge(self.classifier.encoder.embeddings, adapters)
        self.model = NanoModel(self.edge, self.classifier)
        self.model.eval()  # no dropout, as in LoRA mode
        self.max_rank = max_rank
        self.hidden_size = hidden
        self.layers = [(f"nano.segment{s}", adapter) for s, adapter in enumerate(adapters)]
        self.layer_names = [name for name, _ in self.layers]
        self.frozen_prefix_layers = 0  # the adapter sits below every layer: nothing to cache

    def factor(self, index: int) -> tuple[nn.Parameter, nn.Parameter]:
        adapter = self.layers[index][1]
        return adapter.lora_A, adapter.lora_B

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for i in range(len(self.layers)) for p in self.factor(i)]

    def logits(self, **batch) -> torch.Tensor:
        return self.model(**batch)

    def head_tensors(self) -> dict[str, nn.Parameter]:
        return {HEAD_WEIGHT: self.head.weight, HEAD_BIAS: self.head.bias}

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head_tensors().values())

    def set_ranks(self, ranks) -> None:
        for (_, adapter), rank in zip(self.layers, ranks):
            adapter.mask.zero_()
            adapter.mask[: int(rank)] = 1.0

    def params_per_rank(self) -> list[int]:
        return [2 * self.hidden_size for _ in self.layers]

    def head_param_count(self) -> int:
        return sum(p.numel() for p in self.head_parameters())

    def save_adapter(self, directory: Path) -> None:
        """Adapters and head as safetensors, with a small JSON config (not a PEFT adapter: PEFT has no such tuner)."""
        from safetensors.torch import save_file

        self.set_ranks([self.max_rank] * len(self.layers))
        tensors = {f"{name}.lora_A": a.detach().contiguous() for name, (a, _) in zip(self.layer_names, map(self.factor, range(len(self.layers))))}
        tensors |= {f"{name}.lora_B": b.detach().contiguous() for name, (_, b) in zip(self.layer_names, map(self.factor, range(len(self.layers))))}
        tensors |= {HEAD_WEIGHT: self.head.weight.detach().contiguous(), HEAD_BIAS: self.head.bias.detach().contiguous()}
        directory = Path(directory)
        save_file(tensors, str(directory / "nano_adapter.safetensors"))
        config = {
            "kind": "nano",
            "streams": self.layer_names,
            "max_rank": self.max_rank,
            "scaling": self.layers[0][1].scaling,
            "base_model": self.classifier.name_or_path,
        }
        (directory / "nano_config.json").write_text(json.dumps(config, indent=2) + "\n")


def client_storage(model) -> tuple[int, int]:
    """(parameters held on the client, parameters of the whole model: backbone + head).

    LoRA mode: the client holds the whole model plus its LoRA factors (at max rank).
    Nano mode: the client holds the token embeddings plus its NanoAdapters; backbone and head stay on the server.
    """
    adapter = sum(a.numel() + b.numel() for a, b in (model.factor(i) for i in range(len(model.layers))))
    if isinstance(model, RankedLora):  # PEFT wraps the base: skip its LoRA factors and the head's trainable copy
        named = model.model.base_model.model.named_parameters()
        whole = sum(p.numel() for n, p in named if "lora_" not in n and "modules_to_save" not in n)
        return whole + adapter, whole
    whole = sum(p.numel() for p in model.classifier.parameters())
    embeddings = sum(p.numel() for p in model.edge.embeddings.parameters())
    return embeddings + adapter, whole


def fisher_keys(payload: dict) -> list[str]:
    return [key for key in payload if key.startswith(FISHER_PREFIX)]


def _over_the_air(tensor: torch.Tensor, bits: int, rounding: str, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
    """(what the receiver gets, bytes sent) for one activation or gradient tensor at `bits` per value."""
    from channels.quantization import dequantize_tensor, quantize_tensor

    values = tensor.detach().float().numpy()
    if bits == 32:
        return tensor.detach().float(), int(values.astype(np.float32).nbytes)
    codes, scale = quantize_tensor(values, bits, rounding, rng)
    received = dequantize_tensor(codes, scale, bits, values.shape)
    return torch.from_numpy(received), int(codes.nbytes + scale.nbytes)


def split_step(
    model: NanoClassifier,
    batch: dict[str, torch.Tensor],
    labels: torch.Tensor,
    bits: int = 32,
    rounding: str = "nearest",
    rng=None,
    loss_fn=None,
    send_gradient: bool = True,
):
    """One split forward/backward (no optimizer step). Returns (loss, activation bytes up, gradient bytes down).
    `loss_fn(logits, labels)`: the task's loss (`Task.loss`; cross-entropy when None). `send_gradient=False` when no
    adapter of the batch's streams trains (rank 0): the server still trains its head, and nothing goes back down.

    The client's graph ends at `activations`; the server's starts at a fresh leaf
    holding what it received. The only link between them is the gradient sent back.
    Metered: the activations and the gradient; the attention mask and labels the server also needs (a length and a
    label per row, ~0.5 % of the activations at 32 bits) are not counted.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    activations = model.edge(batch["input_ids"], batch.get("token_type_ids"))  # client
    received, bytes_up = _over_the_air(activations, bits, rounding, rng)
    server_input = received.detach().requires_grad_()  # server
    logits = model.model.server(server_input, batch["attention_mask"])
    loss = (loss_fn or F.cross_entropy)(logits.float(), labels)
    loss.backward()  # head gradients (server) and dL/d(activations)
    if not send_gradient:
        return loss, bytes_up, 0
    gradient, bytes_down = _over_the_air(server_input.grad, bits, rounding, rng)
    if activations.requires_grad:
        activations.backward(gradient)  # client: adapter gradients
    return loss, bytes_up, bytes_down


def split_train(runtime, payload: dict[str, np.ndarray], client_id: int, server_round: int) -> tuple[dict[str, np.ndarray], dict]:
    """Local training of one nano client by split computation; same batches and seeds as `local_train`."""
    from fedsim.batches import client_batches, client_seed

    scenario = runtime.scenario
    cfg = scenario.train
    model: NanoClassifier = runtime.model
    ranks = load_payload(model, payload)
    factors = [p for i, r in enumerate(ranks) if r > 0 for p in model.factor(i)]
    groups = [{"params": model.head_parameters(), "lr": cfg.head_lr}]
    if factors:
        groups.append({"params": factors, "lr": cfg.lr})
    optimizer = torch.optim.Adam(groups)
    q = scenario.quantization
    rng = np.random.default_rng([*client_seed(scenario.seed, server_round, client_id), 7032])
    factors_by_layer = [model.factor(i) for i in range(len(model.layers))]
    fisher = FisherMeter(factors_by_layer) if wants_fisher(scenario) else None
    betas = sensitivity_betas(scenario)
    sensitivity = SensitivityMeter(factors_by_layer, *betas) if betas else None
    seen = np.zeros(len(model.layers), dtype=bool)
    losses, tokens, bytes_up, bytes_down = [], 0, 0, 0

    def backward(indices):
        nonlocal tokens, bytes_up, bytes_down, seen
        batch = runtime.batch("train", indices)
        labels = batch.pop("labels")
        segments = batch.get("token_type_ids", torch.zeros_like(batch["input_ids"]))[batch["attention_mask"].bool()]
        present = np.array([bool((segments == s).any()) for s in range(len(model.layers))])
        seen |= present
        trains = bool(np.any(present & (np.asarray(ranks) > 0)))
        loss, up, down = split_step(model, batch, labels, q.bits_per_param, q.rounding, rng, runtime.task.loss, send_gradient=trains)
        losses.append(loss.item())
        tokens += int(batch["attention_mask"].sum())
        bytes_up += up
        bytes_down += down

    meters = [m for m in (fisher, sensitivity) if m is not None]
    steps = local_loop(optimizer, client_batches(runtime, client_id, server_round), backward, meters)
    # A stream adapter no batch touched is unchanged: it is not uploaded (the server keeps its global value).
    upload = truncate(state_from_model(model), [r if seen[i] else 0 for i, r in enumerate(ranks)])
    if fisher is not None:
        fisher.add_to(upload, steps)
    metrics = {
        "num-examples": len(runtime.partitions[client_id]),
        "train-loss": float(np.mean(losses)),
        "tokens": tokens,
        "bytes-up-activations": bytes_up,
        "bytes-down-gradients": bytes_down,
    }
    if sensitivity is not None:
        metrics["sensitivity"] = sensitivity.scores().tolist()
    return upload, metrics


def build_nano(scenario, num_labels: int, dtype=None) -> NanoClassifier:
    """The `nano` adapter kind's model (fedsim.adapters); its split training runs on the CPU in float32."""
    return NanoClassifier(scenario.model.backbone, num_labels, scenario.adapter.max_rank, scenario.adapter.alpha)
