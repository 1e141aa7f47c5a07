"""AdaLoRA's sensitivity importance, measured by a client while it trains.

After every backward pass, for every entry w of a layer's LoRA factors A and B:

    I = |w · ∂L/∂w|                     (sensitivity)
    Ī ← β1 Ī + (1 − β1) I               (smoothed sensitivity)
    Ū ← β2 Ū + (1 − β2) |I − Ī|         (its uncertainty)
    s = Ī · Ū

AdaLoRA (Zhang et al. 2023, eq. 7-9) scores rank component i by the mean s of its row of A and of its
column of B (plus its singular value's, which plain LoRA has not). `scores()` reports, per layer, the
sum of that score over the components: those beyond the client's rank get no gradient and add nothing,
so the server divides by the rank it sent (`fedsim.round.merge.client_importance`) and a layer's claim
on the budget is its mean component score, whatever its current rank. A sum would grow with the rank
the policy itself gave the layer, and a proportional sharing of it would drift towards the layers
already favoured even when every component scores the same.

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
        """[layers], or [clients, layers] for stacked factors: Σ over components of the component scores."""
        per_layer = []
        for (s_a, s_b), (u_a, u_b) in zip(self.smoothed, self.uncertainty):
            # A [..., R, in], B [..., out, R]: component i's score is the mean over its row of A plus its column of B.
            per_layer.append(((s_a * u_a).mean(-1) + (s_b * u_b).mean(-2)).sum(-1))
        return torch.stack(per_layer, dim=-1).double().cpu().numpy() if per_layer else np.zeros(0)


def sensitivity_betas(scenario) -> tuple[float, float] | None:
    """(β1, β2) when the scenario's rank policy asks clients to report sensitivity, else None."""
    betas = getattr(scenario.policy, "sensitivity_betas", None)
    return tuple(betas) if betas else None
