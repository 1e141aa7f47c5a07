"""AdaLoRA's sensitivity importance, measured by a client while it trains.

After every backward pass, for every entry w of a layer's LoRA factors A and B:

    I = |w · ∂L/∂w|                     (sensitivity)
    Ī ← β1 Ī + (1 − β1) I               (smoothed sensitivity)
    Ū ← β2 Ū + (1 − β2) |I − Ī|         (its uncertainty)
    s = Ī · Ū

and a layer's importance is Σ s over its entries (AdaLoRA scores a rank triplet by the
mean s of its row of A and column of B; the sum over a layer is the layer's claim on the
budget). Components beyond a layer's rank get no gradient, so they add nothing.

Factors may carry a leading client dimension (the cohort engine's stacked factors); then
`scores()` has one row per client.
"""

from __future__ import annotations

import numpy as np
import torch


class SensitivityMeter:
    def __init__(self, factors: list[tuple[torch.Tensor, torch.Tensor]], beta1: float, beta2: float, stacked: bool = False):
        self.factors = factors
        self.beta1, self.beta2 = beta1, beta2
        self.stacked = stacked
        self.smoothed = [[torch.zeros_like(p, dtype=torch.float32) for p in pair] for pair in factors]
        self.uncertainty = [[torch.zeros_like(p, dtype=torch.float32) for p in pair] for pair in factors]

    @torch.no_grad()
    def update(self) -> None:
        for pair, smoothed, uncertainty in zip(self.factors, self.smoothed, self.uncertainty):
            for p, s_bar, u_bar in zip(pair, smoothed, uncertainty):
                if p.grad is None:
                    continue
                sensitivity = (p.detach().float() * p.grad.float()).abs()
                s_bar.mul_(self.beta1).add_(sensitivity, alpha=1 - self.beta1)
                u_bar.mul_(self.beta2).add_((sensitivity - s_bar).abs(), alpha=1 - self.beta2)

    def scores(self) -> np.ndarray:
        """[layers], or [clients, layers] for stacked factors: Σ Ī·Ū per layer."""
        per_layer = []
        for smoothed, uncertainty in zip(self.smoothed, self.uncertainty):
            score = sum((s * u).flatten(start_dim=1 if self.stacked else 0).sum(-1) for s, u in zip(smoothed, uncertainty))
            per_layer.append(score)
        return torch.stack(per_layer, dim=-1).double().cpu().numpy() if per_layer else np.zeros(0)


def sensitivity_betas(scenario) -> tuple[float, float] | None:
    """(β1, β2) when the scenario's rank policy asks clients to report sensitivity, else None."""
    betas = getattr(scenario.policy, "sensitivity_betas", None)
    return tuple(betas) if betas else None
