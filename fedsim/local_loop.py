"""The one local-training loop every adapter kind and engine runs, with its pluggable parts.

    for each step's batch:  zero the gradients
                            backward(batch)               the kind's forward and backward (per client,
                                                          split computation, or a whole cohort at once)
                            meter.update() for each meter  what the gradients say, before anything edits
                                                          them (Fisher merging, AdaLoRA's sensitivity)
                            algorithm.after_backward()    the federated algorithm's gradient correction
                            optimizer.step()
                            algorithm.after_step()        (FedProx, SCAFFOLD, ...: fedsim.algorithms.local)

`train_lora` (fedsim.training), `split_train` (fedsim.nano) and `cohort_train` (fedsim.cohort) differ only
in `backward` and in which meters they attach.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from fedsim.payload import FISHER_PREFIX, a_key


def local_loop(optimizer: torch.optim.Optimizer, batches: Iterable, backward: Callable, meters: Sequence = (), algorithm=None) -> int:
    """Run one optimizer step per item of `batches` (see the module docstring); returns the number of steps."""
    steps = 0
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        backward(batch)
        for meter in meters:
            meter.update()
        if algorithm is not None:
            algorithm.after_backward()  # after the meters: they measure the loss alone
        optimizer.step()
        if algorithm is not None:
            algorithm.after_step()
        steps += 1
    return steps


class FisherMeter:
    """Sum of squared gradients of every LoRA factor, for the diagonal Fisher estimate that Fisher merging
    weighs updates by (Matena & Raffel 2022): F = mean over steps of (∂L/∂w)²."""

    def __init__(self, factors: list[tuple[torch.Tensor, torch.Tensor]]):
        self.factors = factors
        self.sums = [(torch.zeros_like(a), torch.zeros_like(b)) for a, b in factors]

    @torch.no_grad()
    def update(self) -> None:
        for (a, b), (f_a, f_b) in zip(self.factors, self.sums):
            if a.grad is not None:
                f_a += a.grad.detach().float() ** 2
                f_b += b.grad.detach().float() ** 2

    def add_to(self, upload: dict[str, np.ndarray], steps: int) -> None:
        """Put the estimate of every factor in the upload next to it, cut to its rank."""
        for i, (f_a, f_b) in enumerate(self.sums):
            if a_key(i) in upload:
                rank = upload[a_key(i)].shape[0]
                upload[f"{FISHER_PREFIX}A.{i}"] = np.ascontiguousarray((f_a[:rank] / steps).cpu().numpy(), dtype=np.float32)
                upload[f"{FISHER_PREFIX}B.{i}"] = np.ascontiguousarray((f_b[:, :rank] / steps).cpu().numpy(), dtype=np.float32)
