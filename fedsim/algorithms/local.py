"""The client's side of the algorithms, on a training loop's own tensors: FedProx's proximal gradient and
SCAFFOLD's drift correction (formulas in `fedsim.algorithms.fedprox` and `fedsim.algorithms.scaffold`).

Both training engines use it the same way: build it after loading the received payload(s), call
`after_backward()` after each backward pass, `after_step()` after each optimiser step, and add
`upload(index, ranks)` to each client's upload. `params` maps payload keys (A.{i}, B.{i}, head.weight,
head.bias) to (tensor, learning rate); the tensors are full size (max_rank components, the ones beyond
a client's rank held at zero), one client's (`stacked=False`) or every client's stacked on dim 0
(the cohort engine). FedAvg and the server optimisers make every call a no-op.
"""

from __future__ import annotations

import numpy as np
import torch

from fedsim.algorithms.base import at_ranks, region
from fedsim.algorithms.scaffold import CONTROL_PREFIX, DELTA_PREFIX
from fedsim.payload import MEMORY_PREFIX


def _gather(payloads: list[dict[str, np.ndarray]], name: str, key: str, like: torch.Tensor, stacked: bool) -> torch.Tensor:
    out = torch.zeros_like(like, dtype=torch.float32)
    for c, payload in enumerate(payloads):
        if name in payload:
            value = torch.from_numpy(np.asarray(payload[name], dtype=np.float32)).to(out.device)
            (out[c] if stacked else out)[region(key, value)] = value
    return out


class LocalAlgorithm:
    def __init__(self, algorithm, params: dict[str, tuple[torch.Tensor, float]], payloads: list[dict[str, np.ndarray]], stacked: bool):
        self.params = params
        self.stacked = stacked
        self.fedprox = algorithm.name == "fedprox"
        self.mu = float(algorithm.mu) if self.fedprox else 0.0
        self.scaffold = algorithm.name == "scaffold"
        self.active = self.fedprox or self.scaffold
        self.steps = 0
        if not self.active:
            return
        self.start = {key: tensor.detach().clone() for key, (tensor, _) in params.items()}
        if self.scaffold:
            self.control = {key: _gather(payloads, CONTROL_PREFIX + key, key, t, stacked) for key, (t, _) in params.items()}
            self.own = {key: _gather(payloads, MEMORY_PREFIX + CONTROL_PREFIX + key, key, t, stacked) for key, (t, _) in params.items()}

    def after_backward(self) -> None:
        """FedProx: grad += mu (theta - theta_received), the gradient of (mu/2)||theta - theta_received||²."""
        if not self.fedprox:
            return
        for key, (tensor, _) in self.params.items():
            prox = self.mu * (tensor.detach() - self.start[key])
            if tensor.grad is None:
                tensor.grad = prox
            else:
                tensor.grad.add_(prox)

    @torch.no_grad()
    def after_step(self) -> None:
        """SCAFFOLD: y <- y - eta_l (c - c_i) after the optimiser's step."""
        self.steps += 1
        if self.scaffold:
            for key, (tensor, lr) in self.params.items():
                tensor.sub_(self.control[key] - self.own[key], alpha=lr)

    @torch.no_grad()
    def upload(self, index: int, ranks) -> dict[str, np.ndarray]:
        """SCAFFOLD: Delta c_i (uplink, `dC.`) and c_i+ (carried home, `memory.C.`) of client `index`, cut to its ranks."""
        if not self.scaffold:
            return {}
        out = {}
        pick = (lambda t: t[index]) if self.stacked else (lambda t: t)
        for key, (tensor, lr) in self.params.items():
            own, control = pick(self.own[key]).double(), pick(self.control[key]).double()
            if lr > 0 and self.steps > 0:
                new = own - control + (pick(self.start[key]).double() - pick(tensor).double()) / (self.steps * lr)
            else:  # a frozen parameter learns nothing about the drift: keep c_i
                new = own
            new_cut = at_ranks(key, new.cpu().numpy(), ranks)
            if new_cut is not None:  # a layer at rank 0 trained nothing
                out[DELTA_PREFIX + key] = at_ranks(key, (new - own).cpu().numpy(), ranks)
                out[MEMORY_PREFIX + CONTROL_PREFIX + key] = new_cut
        return out
