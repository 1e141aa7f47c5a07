"""Per-process working set: one model, the tokenised data and the client partitions.

Clients never hold a model copy. A process (the server, a Ray actor, a SuperNode)
builds one `Runtime` per scenario and every client it serves loads its adapter
into that one model, trains, and hands the payload back.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from fedsim.adapter_state import AdapterState, state_from_model
from fedsim.adapters import adapter_kind
from fedsim.backbone_check import check_backbone_fits
from fedsim.config import Scenario
from fedsim.data import partition, split_validation
from fedsim.hub import load_tokenizer
from fedsim.prefix_cache import PrefixCache
from fedsim.tasks import build_task
from fedsim.types import FedsimError


def _runtime_key(scenario: Scenario) -> str:
    """The parts of a scenario that decide the model and data (not rounds, policy or channel)."""
    parts = {
        "task": scenario.task.model_dump(),
        "model": scenario.model.model_dump(),
        "data": scenario.data.model_dump(),
        "adapter": scenario.adapter.model_dump(),
        "precision": scenario.train.precision,
        "prefix_cache": scenario.train.prefix_cache,
        "num_clients": scenario.clients.num_clients,
        "seed": scenario.seed,
        "device": scenario.device,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class Runtime:
    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        check_backbone_fits(scenario)  # max_length and max_rank against the backbone, before any weight is built
        self.task = build_task(scenario.task)
        corpus = self.task.load(scenario.data)
        self.label_names = corpus.label_names
        tokenizer = load_tokenizer(scenario.model.backbone)
        self.train = self.task.encode(tokenizer, corpus.train, scenario.data.max_length)
        self.test = self.task.encode(tokenizer, corpus.test, scenario.data.max_length)
        self.validation, kept = split_validation(len(corpus.train.labels), scenario.data.validation_samples, scenario.seed)
        parts = partition(corpus.train.labels[kept], scenario.clients.num_clients, scenario.data.partition, scenario.seed)
        self.partitions = [kept[p] for p in parts]  # indices into the training set
        self.device = resolve_device(scenario.device)  # before any weight is built: a missing GPU fails fast
        with torch.random.fork_rng():
            torch.manual_seed(scenario.seed)  # seeds PEFT's initialisation of A, so the initial global adapter is reproducible
            # On a GPU with bf16 the frozen base is stored in bf16 (half the memory); otherwise float32, named explicitly:
            # transformers 5 would keep a bf16/fp16 checkpoint in its stored dtype, under fp32 too.
            dtype = torch.bfloat16 if self.device.type == "cuda" and scenario.train.precision == "bf16" else torch.float32
            self.model = adapter_kind(scenario).build_fn()(scenario, len(self.label_names), dtype)
            if self.model.head is not None:
                torch.nn.init.normal_(self.model.head.weight, std=0.02)
                torch.nn.init.zeros_(self.model.head.bias)
        if self.device.type != "cpu":
            self.model.to(self.device)
        self.initial_state: AdapterState = state_from_model(self.model)
        self.eval_subset = self._eval_subset()
        prefix_layers = self.model.frozen_prefix_layers if scenario.train.prefix_cache else 0
        cache_dtype = torch.bfloat16 if scenario.train.precision == "bf16" else torch.float32
        self.prefix = (
            {
                "train": PrefixCache(self.model.classifier, self.train, prefix_layers, cache_dtype),
                "test": PrefixCache(self.model.classifier, self.test, prefix_layers, cache_dtype),
            }
            if prefix_layers > 0
            else None
        )

    def batch(self, split: str, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """Model inputs and labels for examples `indices` of 'train' or 'test', from the prefix cache when valid."""
        batch = self.prefix[split].batch(indices) if self.prefix is not None else (self.train if split == "train" else self.test).batch(indices)
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.scenario.train.precision == "bf16")

    def _eval_subset(self) -> np.ndarray:
        n = len(self.test)
        size = self.scenario.data.eval_samples
        if size is None or size >= n:
            return np.arange(n)
        return np.sort(np.random.default_rng([self.scenario.seed, 7002]).choice(n, size, replace=False))

    @property
    def n_layers(self) -> int:
        return len(self.model.layers)


def resolve_device(name: str) -> torch.device:
    """`device` of a scenario as a torch device; cuda without a visible GPU is one clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FedsimError("device=cuda: no CUDA device is visible to torch (torch.cuda.is_available() is false); allowed: device=cpu or auto")
    return torch.device(name)


_RUNTIMES: dict[str, Runtime] = {}


def get_runtime(scenario: Scenario) -> Runtime:
    """The process's runtime for this scenario's model and data, built once (the last two are kept)."""
    key = _runtime_key(scenario)
    if key not in _RUNTIMES:
        while len(_RUNTIMES) >= 2:
            _RUNTIMES.pop(next(iter(_RUNTIMES)))
        _RUNTIMES[key] = Runtime(scenario)
    runtime = _RUNTIMES[key]
    # The cached model and data depend only on the key's fields; training, channel and aggregation
    # settings (lr, local_steps, quantization, ...) must come from the scenario asked for now.
    runtime.scenario = scenario
    return runtime


def batches_by_length(runtime: Runtime, split: str, indices: np.ndarray, batch_size: int):
    """Evaluation batches of similar length, so dynamic padding wastes little."""
    data = runtime.train if split == "train" else runtime.test
    order = indices[np.argsort(data.lengths[indices], kind="stable")]
    for start in range(0, len(order), batch_size):
        yield runtime.batch(split, order[start : start + batch_size])
