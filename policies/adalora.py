"""`adalora`: AdaLoRA's rank-budget schedule, applied to federated rounds.

The total budget b(t) (the sum of ranks over layers) follows AdaLoRA's cubic schedule in rounds t:

    b(t) = b_0                                              t <= t_init
    b(t) = b_T + (b_0 - b_T) · (1 - (t - t_init) / (T - t_init - t_final))^3      otherwise
    b(t) = b_T                                              t > T - t_final

with t the 1-based round, as PEFT's `RankAllocator.budget_schedule` counts steps: the cubic reaches b_T at
t = T - t_final, so b_T holds for the last t_final + 1 rounds (rounds 8-10 of 10 with t_final = 2).

and the allocation is recomputed only every ΔT rounds (between, the previous one is kept,
as AdaLoRA masks only every ΔT steps). The budget is shared across layers in proportion
to their importance s_l, water-filled so that no layer exceeds max_rank:

    r_l = min(max_rank, c · s_l),  c chosen so that Σ_l r_l = b(t), rounded by largest remainder.

Importance s_l is the observation's `layer_importance`:

- `importance: sensitivity` (default): AdaLoRA's own signal. Each client smooths |w·∇w| over its
  local steps with β1 and β2 (`fedsim.sensitivity`) and reports Σ Ī·Ū per layer; the server
  averages the delivered reports, weighted by examples.
- `importance: singular-values`: the server-side singular-value mass of the last aggregated ΔW_l
  (clients report nothing extra).

Across rounds the policy smooths s_l once more with the same β1 (EMA of s) and β2 (EMA of |s - EMA|):
s̄ ← β1 s̄ + (1-β1) s, ū ← β2 ū + (1-β2)|s - s̄|, score = s̄ · ū (or s̄ alone before ū is informative),
since each round hears from different clients. A round from which no update arrived adds no sample
(`Observation.importance_round` did not advance). With `importance: sensitivity` s_l is the mean score
of a layer's rank components (so it does not grow with the rank the policy gave the layer), and a layer
no delivered client trained keeps its last value (`fedsim.round.merge.client_importance`): a layer this
policy gives rank 0 is not measured again, its uncertainty term decays and so does its score, as the
score of a component AdaLoRA has masked decays (its sensitivity is 0 once its singular value is).

With `rate_scaling`, client k's budget is b(t) · min(1, C_k / mean(C)): slow clients send less.

Where this differs from PEFT's AdaLoRA (`peft/tuners/adalora`), so that a paper can say what it compared with:

- it allocates whole layers' ranks in proportion to their importance (above), where AdaLoRA keeps the top-b
  singular-value triplets over all layers;
- it keeps reallocating every ΔT rounds in the final t_final rounds, at the fixed budget b_T, where PEFT's
  `update_and_allocate` freezes the rank pattern from step T - t_final on and only re-applies it;
- b(t) is rounded to the nearest whole rank (`allocate_ranks`), where PEFT truncates (`int()`): a budget can be
  one rank higher here in a round of the cubic's decay.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedsim.types import Observation
from policies.base import RankPolicy, clip_ranks
from policies.common import allocate_ranks


class AdaLoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["adalora"] = "adalora"
    init_budget: int | None = Field(None, ge=0, description="Total rank over layers at the start (null = max_rank per layer).")
    target_budget: int | None = Field(None, ge=0, description="Total rank over layers at the end (null = half of max_rank per layer).")
    tinit: int = Field(1, ge=0, description="Rounds at the initial budget before it starts decaying.")
    tfinal: int = Field(2, ge=0, description="Final rounds held at the target budget.")
    deltaT: int = Field(1, ge=1, description="Reallocate ranks only every deltaT rounds.")
    beta1: float = Field(0.85, ge=0, lt=1, description="EMA factor of the importance.")
    beta2: float = Field(0.85, ge=0, lt=1, description="EMA factor of the importance's uncertainty.")
    rate_scaling: bool = Field(False, description="Scale each client's budget by min(1, its rate / the mean rate).")
    importance: Literal["sensitivity", "singular-values"] = Field(
        "sensitivity", description="Layer importance: clients' smoothed |w·grad w| (AdaLoRA), or the server's singular values of ΔW."
    )

    @property
    def sensitivity_betas(self) -> tuple[float, float] | None:
        """Read by the clients (`fedsim.sensitivity`): report sensitivity, smoothed with these."""
        return (self.beta1, self.beta2) if self.importance == "sensitivity" else None


def cubic_budget(round_: int, total_rounds: int, init: float, target: float, tinit: int, tfinal: int) -> float:
    """AdaLoRA's schedule (see the module docstring), 1-based rounds."""
    if round_ <= tinit:
        return float(init)
    span = total_rounds - tinit - tfinal
    if round_ > total_rounds - tfinal or span <= 0:
        return float(target)
    progress = min(max((round_ - tinit) / span, 0.0), 1.0)
    return float(target + (init - target) * (1.0 - progress) ** 3)


def share_budget(budget: float, importance: np.ndarray, max_rank: int) -> np.ndarray:
    """Integer ranks, Σ = round(budget) (capped at max_rank · layers), proportional to importance, each <= max_rank.
    Scale-free: real AdaLoRA sensitivities sum to ~1e-14 (`policies.common.allocate_ranks`)."""
    return allocate_ranks(budget, importance, 0, max_rank)


class AdaLoraPolicy(RankPolicy):
    name = "adalora"

    def __init__(self, config):
        super().__init__(config)
        self.reset()

    def reset(self) -> None:
        self.ema: np.ndarray | None = None
        self.uncertainty: np.ndarray | None = None
        self.allocation: np.ndarray | None = None
        self.allocated_round = -(10**9)
        self.importance_round: int | None = None

    def _importance(self, observation: Observation) -> np.ndarray:
        s = np.nan_to_num(np.asarray(observation.layer_importance, dtype=float), nan=0.0, posinf=0.0)
        stale = observation.importance_round is not None and observation.importance_round == self.importance_round
        self.importance_round = observation.importance_round
        if self.ema is None or len(self.ema) != len(s):
            self.ema, self.uncertainty = s.copy(), np.zeros_like(s)
        elif not stale:  # a round in which nothing arrived measured nothing: counting its value again would bias the EMA
            self.ema = self.config.beta1 * self.ema + (1 - self.config.beta1) * s
            self.uncertainty = self.config.beta2 * self.uncertainty + (1 - self.config.beta2) * np.abs(s - self.ema)
        return self.ema * self.uncertainty if self.uncertainty.sum() > 0 else self.ema

    def budget(self, observation: Observation) -> float:
        full = observation.max_rank * observation.n_layers
        init = self.config.init_budget if self.config.init_budget is not None else full
        target = self.config.target_budget if self.config.target_budget is not None else full // 2
        c = self.config
        return cubic_budget(observation.round, observation.total_rounds, min(init, full), min(target, full), c.tinit, c.tfinal)

    def ranks(self, observation: Observation) -> np.ndarray:
        importance = self._importance(observation)
        budget = self.budget(observation)
        due = observation.round - self.allocated_round >= self.config.deltaT
        if due or self.allocation is None or len(self.allocation) != observation.n_layers:
            self.allocation = share_budget(budget, importance, observation.max_rank)
            self.allocated_round = observation.round
        n = observation.n_clients
        if not self.config.rate_scaling:
            return clip_ranks(np.tile(self.allocation, (n, 1)), observation.max_rank)
        rates = np.nan_to_num(np.asarray(observation.channel.rate_bps, dtype=float), nan=0.0, posinf=0.0)
        mean = rates.mean() if n and rates.mean() > 0 else 1.0
        scales = np.minimum(1.0, rates / mean)
        rows = [share_budget(self.allocation.sum() * s, self.allocation.astype(float) + 1e-9, observation.max_rank) for s in scales]
        return clip_ranks(np.array(rows).reshape(n, observation.n_layers), observation.max_rank)
