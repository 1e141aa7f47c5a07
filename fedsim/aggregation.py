"""Merging client adapters of different ranks into the global adapter.

A client at rank r receives the global adapter truncated to its first r components
(A[:r], B[:, :r]) and trains only those. How its reply is combined is `average`:

`updates` (default, FedAvg: McMahan et al. 2017, "Communication-Efficient Learning of Deep
Networks from Decentralized Data"): the client sends its *change* ΔA_k, ΔB_k to the part it
received, and the server adds the weighted mean change to the global adapter. Components a
client did not receive are not touched by it, so a round with no local training (lr = 0)
leaves the global adapter unchanged, whatever the ranks (`tests/test_aggregation.py`).

`models`: the clients' adapters replace the global one (the weighted mean of what they sent).
With `svd` this is FlexLoRA (Bai et al. 2024, "Federated Fine-tuning of Large Language Models
under Heterogeneous Tasks and Client Resources"); with `fedavg-factors` it is HetLoRA's zero
padding (Cho et al. 2024, "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation
Models"), weighted by examples (FedAvg), not by HetLoRA's ||B_k A_k||_F, and without its rank
self-pruning. Both treat the components beyond a client's rank as zeros: a round of rank-2 clients
that do not train at all shrinks a rank-8 global update.
Kept for comparison.

Methods, per adapted layer i, with weights w_k renormalised over the clients that sent layer i
(rank > 0; a layer nobody sent keeps its global value):

`svd` (default): product space. With B'_k A'_k = (B_g[:, :r_k] + ΔB_k)(A_g[:r_k] + ΔA_k) the
client's adapter after training and c_j = Σ_{k: r_k > j} w_k the weight of the clients that
trained component j,

    updates:  W = B_g A_g + Σ_k w_k (B'_k A'_k − B_g[:, :r_k] A_g[:r_k])
                = B_g diag(1 − c) A_g + Σ_k w_k B'_k A'_k
    models:   W = Σ_k w_k B'_k A'_k

W is refactored by truncated SVD, W ≈ U_R Σ_R V_Rᵀ, into A = V_Rᵀ (orthonormal rows) and
B = U_R Σ_R, ordered by singular value, so truncating to rank r later keeps the r most important
directions. The SVD is taken through QR of the stacked factors: O((in + out)·s²) for s stacked
components instead of a dense out×in decomposition. When W has rank above R = max_rank this is
the best rank-R approximation (Eckart-Young), not W itself: `truncated_fraction` reports
sqrt(Σ_i ‖W_i − W_{i,R}‖_F² / Σ_i ‖W_i − B_g A_g‖_F²) over the layers i, the share of the round's
update (in Frobenius norm, pooled over layers) the truncation discarded. A server optimiser's step is
projected to rank R afterwards (`fedsim.algorithms`); what that projection drops is not in it.

`fedavg-factors`: A and B zero-padded to max_rank and averaged separately (updates: A_g + Σ w_k ΔA_k).

`fisher` (FedNano): parameter-wise Fisher merging,
    θ = Σ_k w_k (F_k + ε) θ_k / Σ_k w_k (F_k + ε),
with F_k the client's diagonal Fisher estimate (mean squared gradient, sent as `F.A.{i}`,
`F.B.{i}`, never as a change), w_k its sample weight and ε = FISHER_EPS, over the clients that
sent each parameter (one nobody sent keeps its global value). Both `average` modes give the same
merge, since θ_k = θ_g + Δθ_k and the weights are renormalised per parameter.

The head is a weighted mean (updates: the global head plus the weighted mean change).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import numpy as np

from fedsim.adapter_state import AdapterState, payload_ranks
from fedsim.aggregators import AGGREGATORS
from fedsim.payload import FACTOR_PREFIXES, FISHER_PREFIX, HEAD_KEYS, a_key, b_key
from fedsim.types import FedsimError

FISHER_EPS = 1e-12
STATISTIC_PREFIX = {"fisher": FISHER_PREFIX}  # where a client statistic travels: `F.A.{i}`, `F.B.{i}`
ROUNDOFF = 1e-6  # relative norm below which a product-space update is rounding noise (the Gram trace loses half the digits)


def update_keys(payload: dict[str, np.ndarray]) -> list[str]:
    """Keys that travel as a change in `average: updates`: the factors and the head, not Fisher estimates."""
    return [k for k in payload if k.startswith(FACTOR_PREFIXES) or k in HEAD_KEYS]


def _orthonormal_rows(count: int, dim: int, exclude: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`count` unit rows orthogonal to each other and to the rows of `exclude`: fresh, trainable directions."""
    basis = exclude
    extra = []
    for _ in range(count):
        v = rng.standard_normal(dim)
        if len(basis):
            v -= basis.T @ (basis @ v)
        v /= np.linalg.norm(v)
        extra.append(v)
        basis = np.vstack([basis, v]) if len(basis) else v[None, :]
    return np.array(extra).reshape(count, dim)


def _core(a_stack: np.ndarray, b_stack: np.ndarray):
    """QR of both stacks: B A = Q_b (R_b R_aᵀ) Q_aᵀ, so B A's SVD is that of the small core R_b R_aᵀ."""
    q_b, r_b = np.linalg.qr(b_stack)
    q_a, r_a = np.linalg.qr(a_stack.T)
    return q_b, r_b @ r_a.T, q_a


def lowrank_norm(a_stack: np.ndarray, b_stack: np.ndarray) -> float:
    """‖B A‖_F of a product given by its factors, without forming it: ‖B A‖_F² = tr((BᵀB)(A Aᵀ))."""
    a, b = a_stack.astype(np.float64), b_stack.astype(np.float64)
    return float(np.sqrt(max(np.sum((b.T @ b) * (a @ a.T)), 0.0)))


def refactor_stack(a_stack: np.ndarray, b_stack: np.ndarray, max_rank: int, rng: np.random.Generator):
    """Truncated SVD of B A (B [out, s], A [s, in]). Returns A [R, in], B [out, R], all singular values."""
    q_b, core, q_a = _core(a_stack.astype(np.float64), b_stack.astype(np.float64))
    u, sigma, vt = np.linalg.svd(core)
    left, right = q_b @ u, (q_a @ vt.T).T  # [out, s], [s, in]
    keep = min(max_rank, len(sigma))
    a_new = right[:keep]
    b_new = left[:, :keep] * sigma[:keep]
    if keep < max_rank:  # fewer components than the global rank: fill with fresh directions, B = 0
        a_new = np.vstack([a_new, _orthonormal_rows(max_rank - keep, a_new.shape[1], a_new, rng)])
        b_new = np.hstack([b_new, np.zeros((b_new.shape[0], max_rank - keep))])
    return a_new.astype(np.float32), b_new.astype(np.float32), sigma


def svd_refactor(
    factors: list[tuple[np.ndarray, np.ndarray]], weights: np.ndarray, max_rank: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truncated SVD of Σ w_k B_k A_k from the factors. Returns A [R, in], B [out, R], singular values [R]."""
    a_stack = np.concatenate([a.astype(np.float64) for a, _ in factors], axis=0)
    b_stack = np.concatenate([b.astype(np.float64) * w for (_, b), w in zip(factors, weights)], axis=1)
    a_new, b_new, sigma = refactor_stack(a_stack, b_stack, max_rank, rng)
    return a_new, b_new, np.concatenate([sigma, np.zeros(max(max_rank - len(sigma), 0))])[:max_rank]


class LayerMerge(NamedTuple):
    A: np.ndarray
    B: np.ndarray
    importance: float  # sum of the new global product's singular values
    discarded_sq: float = 0.0  # ‖W − W_R‖_F² lost to truncation (svd only)
    update_sq: float = 0.0  # ‖W − B_g A_g‖_F², the round's update before truncation (svd only)


def merge_svd(glob_a, glob_b, trained, weights, deltas, max_rank, rng, statistics=None) -> LayerMerge:
    """`trained[k]` = client k's (A'_k, B'_k) after training; `deltas`: combine as updates (else models)."""
    glob_a, glob_b = glob_a.astype(np.float64), glob_b.astype(np.float64)
    a_clients = [a.astype(np.float64) for a, _ in trained]
    b_clients = [b.astype(np.float64) * w for (_, b), w in zip(trained, weights)]
    if deltas:  # B_g diag(1 - c) A_g keeps what the clients did not train
        covered = np.zeros(glob_a.shape[0])
        for (a, _), w in zip(trained, weights):
            covered[: a.shape[0]] += w
        a_stack = np.concatenate([glob_a, *a_clients])
        b_stack = np.concatenate([glob_b * (1.0 - covered), *b_clients], axis=1)
    else:
        a_stack, b_stack = np.concatenate(a_clients), np.concatenate(b_clients, axis=1)
    a_new, b_new, sigma = refactor_stack(a_stack, b_stack, max_rank, rng)
    update_sq = lowrank_norm(np.concatenate([a_stack, glob_a]), np.concatenate([b_stack, -glob_b], axis=1)) ** 2
    discarded_sq = float(np.sum(sigma[max_rank:] ** 2))
    if update_sq <= ROUNDOFF**2 * float(np.sum(sigma**2)):  # no update at float64 precision: nothing was discarded
        update_sq = discarded_sq = 0.0
    return LayerMerge(a_new, b_new, float(sigma[:max_rank].sum()), discarded_sq, update_sq)


def singular_mass(a: np.ndarray, b: np.ndarray, max_rank: int) -> float:
    """Σ of the largest `max_rank` singular values of B A, from the small QR core (B A is never formed)."""
    _, core, _ = _core(a.astype(np.float64), b.astype(np.float64))
    return float(np.linalg.svd(core, compute_uv=False)[:max_rank].sum())


def merge_factors(glob_a, glob_b, trained, weights, deltas, max_rank, rng, statistics=None) -> LayerMerge:
    """fedavg-factors: zero-padded means of A and B (updates: of their changes, added to the global)."""
    a_new = glob_a.astype(np.float64).copy() if deltas else np.zeros(glob_a.shape)
    b_new = glob_b.astype(np.float64).copy() if deltas else np.zeros(glob_b.shape)
    for (a, b), w in zip(trained, weights):
        r = a.shape[0]
        a_new[:r] += w * (a.astype(np.float64) - glob_a[:r] if deltas else a)
        b_new[:, :r] += w * (b.astype(np.float64) - glob_b[:, :r] if deltas else b)
    return LayerMerge(a_new.astype(np.float32), b_new.astype(np.float32), singular_mass(a_new, b_new, max_rank))


def fisher_merge(factors, weights, max_rank, fishers, global_factors) -> LayerMerge:
    """Parameter-wise Fisher-weighted mean of A and B; `fishers[k]` = (F_A, F_B) shaped like client k's factors."""
    merged = []
    for side in (0, 1):  # 0: A [r, in] (rank on rows), 1: B [out, r] (rank on columns)
        current = global_factors[side].astype(np.float64)
        numerator, denominator = np.zeros_like(current), np.zeros_like(current)
        for k, w in enumerate(weights):
            theta, fisher = factors[k][side].astype(np.float64), fishers[k][side].astype(np.float64)
            region = (slice(0, theta.shape[0]), slice(None)) if side == 0 else (slice(None), slice(0, theta.shape[1]))
            numerator[region] += w * (fisher + FISHER_EPS) * theta
            denominator[region] += w * (fisher + FISHER_EPS)
        sent = denominator > 0
        merged.append(np.where(sent, numerator / np.where(sent, denominator, 1.0), current).astype(np.float32))
    a_new, b_new = merged
    return LayerMerge(a_new, b_new, singular_mass(a_new, b_new, max_rank))


def merge_fisher(glob_a, glob_b, trained, weights, deltas, max_rank, rng, statistics) -> LayerMerge:
    """The `fisher` aggregator: Fisher merging of the trained factors (the same for both `average` modes)."""
    return fisher_merge(trained, weights, max_rank, statistics["fisher"], (glob_a, glob_b))


class _NeedsRandomness(Exception):
    pass


class _NoRandomness:
    """Stands in for the round's generator while layers merge in parallel: a merge that draws is rerun in order."""

    def __getattr__(self, name):
        raise _NeedsRandomness


MERGE_THREADS = 8
PARALLEL_MERGE_ELEMENTS = 1_000_000  # below this many factor entries a round merges faster in one thread


def merge_layers(jobs: dict, rng: np.random.Generator, parallel: bool = True) -> dict:
    """`job(rng)` for every layer's job (its merge, waiting for the generator), in threads when `parallel`,
    as if one after another in layer order.

    The merges are numpy (QR and SVD of [in + out, s] stacks: ~1 s a round at OPT-1.3B's 48 layers on one
    core), which releases the GIL; BLAS runs single-threaded meanwhile, so the threads do not oversubscribe
    the cores. `aggregate` merges small rounds (MiniLM's) in this thread: there threads cost more than the work.
    A layer that needs random numbers (fresh directions when fewer components than the rank survive) is
    merged again afterwards with the real generator, in layer order, so the generator is drawn from
    exactly as by a sequential loop, and the result is the same to the bit.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    if not parallel:
        return {i: job(rng) for i, job in jobs.items()}

    def attempt(job):
        try:
            return job(_NoRandomness())
        except _NeedsRandomness:
            return None

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(min(MERGE_THREADS, max(len(jobs), 1))) as pool:
        merged = dict(zip(jobs, pool.map(attempt, jobs.values())))
    for i in sorted(jobs):
        if merged[i] is None:
            merged[i] = jobs[i](rng)
    return merged


def _untouched_mass(state: AdapterState, importance: np.ndarray, layers) -> np.ndarray:
    """A layer no delivered update touches keeps its product, and its importance is that product's, not 0."""
    for i in layers:
        importance[i] = singular_mass(state.A[i], state.B[i], state.max_rank)
    return importance


def _merge_with(merge, args: tuple, statistics: dict, rng) -> LayerMerge:
    return merge(*args, rng, statistics)


class Aggregated(NamedTuple):
    state: AdapterState
    importance: np.ndarray  # per layer, every layer: sum of the new global product's singular values
    truncated_fraction: float  # svd: share of the round's update norm the truncation to max_rank discarded


def check_merged(method: str, layer: int, merged, a_shape: tuple, b_shape: tuple) -> None:
    """A merge (registered ones included) returns the layer's new global factors at max_rank: one line otherwise, before
    a wrong shape reaches the model (a torch error far from its cause) or None an AttributeError."""
    if isinstance(merged, LayerMerge) and np.shape(merged.A) == a_shape and np.shape(merged.B) == b_shape and np.ndim(merged.importance) == 0:
        return
    got = type(merged).__name__
    if isinstance(merged, LayerMerge):
        got = f"A {np.shape(merged.A)}, B {np.shape(merged.B)}, importance of shape {np.shape(merged.importance)}"
    raise FedsimError(
        f"aggregation.method={method!r}: its merge returned {got} for layer {layer}; allowed: "
        f"fedsim.aggregation.LayerMerge(A, B, importance) with A {a_shape} and B {b_shape} (the global factors at max_rank) and a scalar importance"
    )


def aggregate(
    global_state: AdapterState,
    uploads: list[dict[str, np.ndarray]],
    weights: list[float],
    method: str,
    rng: np.random.Generator,
    average: str,
) -> Aggregated:
    """New global adapter from the delivered uploads (changes with `average="updates"`, adapters with "models"),
    each adapted layer merged by the aggregator registered as `method` (`fedsim.aggregators`). `average` has no
    default: the scenario's default is "updates", and a caller must say which kind of upload it passes."""
    spec = AGGREGATORS.get(method)
    if spec is None:
        raise ValueError(f"unknown aggregation method {method!r}; allowed: {', '.join(AGGREGATORS)}")
    merge = spec.merge_fn()
    n_layers = len(global_state.A)
    state = global_state.copy()
    importance = np.zeros(n_layers)
    if not uploads:
        return Aggregated(state, _untouched_mass(state, importance, range(n_layers)), 0.0)
    deltas = average == "updates"
    weights_arr = np.asarray(weights, dtype=np.float64)
    ranks = [payload_ranks(u, n_layers) for u in uploads]
    jobs, elements = {}, 0
    for i in range(n_layers):
        senders = [k for k in range(len(uploads)) if ranks[k][i] > 0]
        if not senders:
            continue
        w = weights_arr[senders] / weights_arr[senders].sum()
        glob_a, glob_b = global_state.A[i], global_state.B[i]
        trained = []
        for k in senders:  # the client's adapter after training
            a, b = uploads[k][a_key(i)], uploads[k][b_key(i)]
            if deltas:
                r = a.shape[0]
                a, b = glob_a[:r].astype(np.float64) + a, glob_b[:, :r].astype(np.float64) + b
            trained.append((a, b))
        statistics = {}
        for name in spec.client_statistics:
            prefix = STATISTIC_PREFIX[name]
            missing = [k for k in senders if f"{prefix}{a_key(i)}" not in uploads[k]]
            if missing:
                raise ValueError(f"aggregation {method!r}: upload {missing[0]} has no {name} statistic for layer {i}")
            statistics[name] = [(uploads[k][f"{prefix}{a_key(i)}"], uploads[k][f"{prefix}{b_key(i)}"]) for k in senders]
        jobs[i] = partial(_merge_with, merge, (glob_a, glob_b, trained, w, deltas, global_state.max_rank), statistics)
        elements += sum(a.size + b.size for a, b in trained)
    discarded_sq, update_sq = 0.0, 0.0
    _untouched_mass(state, importance, [i for i in range(n_layers) if i not in jobs])
    for i, merged in merge_layers(jobs, rng, parallel=elements >= PARALLEL_MERGE_ELEMENTS).items():
        check_merged(method, i, merged, global_state.A[i].shape, global_state.B[i].shape)
        state.A[i], state.B[i], importance[i] = merged.A, merged.B, merged.importance
        discarded_sq += merged.discarded_sq
        update_sq += merged.update_sq
    w_all = weights_arr / weights_arr.sum()
    for key in global_state.head:
        mean = sum(w * u[key].astype(np.float64) for w, u in zip(w_all, uploads))
        state.head[key] = (global_state.head[key].astype(np.float64) + mean if deltas else mean).astype(np.float32)
    truncated = float(np.sqrt(discarded_sq / update_sq)) if update_sq > 0 else 0.0
    return Aggregated(state, importance, truncated)
