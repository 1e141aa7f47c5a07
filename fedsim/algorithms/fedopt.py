"""Server optimisers on the round's pseudo-gradient (Reddi et al. 2021, "Adaptive Federated Optimization").

The pseudo-gradient of round t is the FedAvg aggregate's change to the global adapter,

    Delta_t = x_agg - x_t,

and a server optimiser replaces FedAvg's step x_{t+1} = x_t + Delta_t by its own step S_t(Delta_t):
FedAvgM (momentum), FedAdam, FedYogi, FedAdagrad. Their state (momenta) persists across rounds and
is saved with the run (`algorithm_state.safetensors`). A round that aggregated nothing leaves the
global adapter and the optimiser state as they were (Flower's strategies do the same).

**The space they act in.** With heterogeneous ranks the adapter's coordinates must mean the same
thing from round to round for per-coordinate state (momentum, second moments) to make sense:

- `aggregation.method: svd` (the default) refactors B·A by SVD every round, so the factors' basis
  rotates: a momentum on A and B would add vectors written in different bases. The optimiser
  therefore acts in **product space**, on W_l = B_l A_l of each adapted layer (dense, out x in),
  and the result x_t + S_t is projected back to rank max_rank by truncated SVD (Eckart-Young), as
  the aggregate itself is. Memory: one out x in float64 array per layer and moment.
- `fedavg-factors` and `fisher` keep the factors' coordinates (component j stays component j), so
  the optimiser acts on **A and B** directly (zero-padded to max_rank).

The head is a plain parameter in both. The step is applied as a correction to the aggregate,
x_{t+1} = x_agg + (S_t - Delta_t), so a step equal to Delta_t (FedAvgM with momentum 0 and server
lr 1) returns the aggregate bit for bit.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedsim.algorithms.base import FederatedAlgorithm
from fedsim.payload import FACTOR_PREFIXES, a_key, b_key


class AdamLikeConfig(BaseModel):
    """FedAdam's and FedYogi's hyper-parameters (Reddi et al.'s Algorithm 2); each subclass narrows `name`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    server_lr: float = Field(1e-2, gt=0, description="Server learning rate eta.")
    beta_1: float = Field(0.9, ge=0, lt=1, description="First-moment decay.")
    beta_2: float = Field(0.99, ge=0, lt=1, description="Second-moment decay.")
    tau: float = Field(1e-3, gt=0, description="Adaptivity tau: added to sqrt(v); v starts at tau².")


def to_space(state, product: bool) -> dict[str, np.ndarray]:
    """The adapter as the optimiser sees it: W.{i} = B A (product space) or A.{i}, B.{i}; plus the head; float64."""
    vectors: dict[str, np.ndarray] = {}
    for i, (a, b) in enumerate(zip(state.A, state.B)):
        if product:
            vectors[f"W.{i}"] = b.astype(np.float64) @ a.astype(np.float64)
        else:
            vectors[a_key(i)] = a.astype(np.float64)
            vectors[b_key(i)] = b.astype(np.float64)
    for key, value in state.head.items():
        vectors[key] = value.astype(np.float64)
    return vectors


def apply_correction(aggregated, base: dict[str, np.ndarray], correction: dict[str, np.ndarray]):
    """`aggregated` (an `Aggregated`) moved by `correction` in the space of `base` (= to_space(aggregated.state))."""
    from fedsim.aggregation import singular_mass  # imports torch; a scenario's config reads this module without it

    state = aggregated.state.copy()
    importance = np.array(aggregated.importance, dtype=float, copy=True)
    rank = state.max_rank
    touched = set()
    for key, corr in correction.items():
        if not np.any(corr):
            continue
        target = base[key] + corr
        if key.startswith("W."):
            i = int(key[2:])
            u, sigma, vt = np.linalg.svd(target, full_matrices=False)
            state.A[i] = vt[:rank].astype(np.float32)
            state.B[i] = (u[:, :rank] * sigma[:rank]).astype(np.float32)
            importance[i] = float(sigma[:rank].sum())
        elif key.startswith(FACTOR_PREFIXES):
            i = int(key[2:])
            (state.A if key[0] == "A" else state.B)[i] = target.astype(np.float32)
            touched.add(i)
        else:
            state.head[key] = target.astype(np.float32)
    for i in touched:
        importance[i] = singular_mass(state.A[i], state.B[i], rank)
    return aggregated._replace(state=state, importance=importance)


class ServerOptimizer(FederatedAlgorithm):
    """Base of the server optimisers: subclasses define `step(delta) -> step` on float64 arrays by key."""

    def __init__(self, config, method: str, num_clients: int):
        super().__init__(config, method, num_clients)
        self.product = method == "svd"
        self.moments: dict[str, dict[str, np.ndarray]] = {}  # moment name -> key -> array
        self.rounds = 0

    def step(self, delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def server_update(self, global_state, aggregated, uploads, weights):
        if not uploads:
            return aggregated
        base = to_space(aggregated.state, self.product)
        start = to_space(global_state, self.product)
        delta = {key: base[key] - start[key] for key in base}
        step = self.step(delta)
        self.rounds += 1
        return apply_correction(aggregated, base, {key: step[key] - delta[key] for key in delta})

    def moment(self, name: str, key: str, like: np.ndarray, initial: float = 0.0) -> np.ndarray:
        return self.moments.setdefault(name, {}).get(key, np.full_like(like, initial))

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"{name}.{key}": value for name, arrays in self.moments.items() for key, value in arrays.items()}
        state["rounds"] = np.array([self.rounds], dtype=np.int64)
        return state


class AdaptiveServerOptimizer(ServerOptimizer):
    """Reddi et al. 2021, Algorithm 2, without bias correction (as published; Flower's FedAdam adds it):

        m_t = beta_1 m_{t-1} + (1 - beta_1) Delta_t
        v_t = second_moment(v_{t-1}, Delta_t²)          (per method)
        x_{t+1} = x_t + eta · m_t / (sqrt(v_t) + tau)

    with m_{-1} = 0 and v_{-1} = tau² elementwise.
    """

    def second_moment(self, v: np.ndarray, squared: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step(self, delta):
        c = self.config
        steps = {}
        for key, d in delta.items():
            m = c.beta_1 * self.moment("m", key, d) + (1.0 - c.beta_1) * d
            v = self.second_moment(self.moment("v", key, d, c.tau**2), d * d)
            self.moments["m"][key], self.moments.setdefault("v", {})[key] = m, v
            steps[key] = c.server_lr * m / (np.sqrt(v) + c.tau)
        return steps
