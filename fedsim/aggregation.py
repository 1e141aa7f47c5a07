"""Merging client adapters of different ranks into the global adapter.

`svd` (default): per layer, the weighted mean of the clients' products,
    ΔW = Σ_k w_k B_k A_k,
refactored by truncated SVD, ΔW ≈ U_R Σ_R V_Rᵀ, into A = V_Rᵀ (orthonormal rows)
and B = U_R Σ_R. Components come out ordered by singular value, so truncating the
global adapter to rank r later keeps the r most important directions. The SVD is
taken through QR of the stacked factors, so it costs O((in + out)·s²) for s
stacked components instead of a dense out×in decomposition.

`fedavg-factors`: A and B are zero-padded to max_rank and averaged separately
(the classic, inexact way; kept for comparison).

`fisher` (FedNano): parameter-wise Fisher merging of A and B (zero-padded to max_rank),
    θ = Σ_k w_k (F_k + ε) θ_k / Σ_k w_k (F_k + ε),
with F_k the client's diagonal Fisher estimate (mean squared gradient, sent as `F.A.{i}`,
`F.B.{i}`), w_k its sample weight and ε = FISHER_EPS. Equal Fisher values give FedAvg;
a client whose Fisher dominates a parameter sets it. A component is merged over the
clients that sent it; one nobody sent keeps its global value.

In all, a layer is averaged over the clients that sent it (rank > 0), with
their weights renormalised; a layer nobody sent keeps its global value. The head
is a plain weighted mean.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from fedsim.adapter_state import HEAD_KEYS, AdapterState, payload_ranks


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


def svd_refactor(
    factors: list[tuple[np.ndarray, np.ndarray]], weights: np.ndarray, max_rank: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truncated SVD of Σ w_k B_k A_k from the factors. Returns A [R, in], B [out, R], singular values [R]."""
    a_stack = np.concatenate([a.astype(np.float64) for a, _ in factors], axis=0)  # [s, in]
    b_stack = np.concatenate([b.astype(np.float64) * w for (_, b), w in zip(factors, weights)], axis=1)  # [out, s]
    q_b, r_b = np.linalg.qr(b_stack)
    q_a, r_a = np.linalg.qr(a_stack.T)
    u, sigma, vt = np.linalg.svd(r_b @ r_a.T)
    left, right = q_b @ u, (q_a @ vt.T).T  # [out, s], [s, in]
    keep = min(max_rank, len(sigma))
    a_new = right[:keep]
    b_new = left[:, :keep] * sigma[:keep]
    if keep < max_rank:  # fewer components than the global rank: fill with fresh directions, B = 0
        a_new = np.vstack([a_new, _orthonormal_rows(max_rank - keep, a_new.shape[1], a_new, rng)])
        b_new = np.hstack([b_new, np.zeros((b_new.shape[0], max_rank - keep))])
        sigma = np.concatenate([sigma[:keep], np.zeros(max_rank - keep)])
    return a_new.astype(np.float32), b_new.astype(np.float32), sigma[:max_rank]


def _fedavg_factors(factors, weights, max_rank, rng):
    out_dim, in_dim = factors[0][1].shape[0], factors[0][0].shape[1]
    a_mean, b_mean = np.zeros((max_rank, in_dim)), np.zeros((out_dim, max_rank))
    for (a, b), w in zip(factors, weights):
        a_mean[: a.shape[0]] += w * a
        b_mean[:, : b.shape[1]] += w * b
    sigma = np.linalg.svd(b_mean @ a_mean, compute_uv=False)[:max_rank]
    return a_mean.astype(np.float32), b_mean.astype(np.float32), sigma


FISHER_EPS = 1e-12


def fisher_merge(factors, weights, max_rank, rng, fishers, global_factors):
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
    sigma = np.linalg.svd(b_new.astype(np.float64) @ a_new.astype(np.float64), compute_uv=False)[:max_rank]
    return a_new, b_new, sigma


AGGREGATORS: dict[str, Callable] = {"svd": svd_refactor, "fedavg-factors": _fedavg_factors, "fisher": fisher_merge}


def aggregate(
    global_state: AdapterState,
    uploads: list[dict[str, np.ndarray]],
    weights: list[float],
    method: str,
    rng: np.random.Generator,
) -> tuple[AdapterState, np.ndarray]:
    """New global adapter from delivered uploads; also per-layer importance (sum of singular values)."""
    merge = AGGREGATORS[method]
    n_layers = len(global_state.A)
    state = global_state.copy()
    importance = np.zeros(n_layers)
    if not uploads:
        return state, importance
    weights_arr = np.asarray(weights, dtype=np.float64)
    ranks = [payload_ranks(u, n_layers) for u in uploads]
    for i in range(n_layers):
        senders = [k for k in range(len(uploads)) if ranks[k][i] > 0]
        if not senders:
            continue
        w = weights_arr[senders] / weights_arr[senders].sum()
        factors = [(uploads[k][f"A.{i}"], uploads[k][f"B.{i}"]) for k in senders]
        if method == "fisher":
            missing = [k for k in senders if f"F.A.{i}" not in uploads[k]]
            if missing:
                raise ValueError(f"aggregation 'fisher': upload {missing[0]} has no Fisher estimate for layer {i}")
            fishers = [(uploads[k][f"F.A.{i}"], uploads[k][f"F.B.{i}"]) for k in senders]
            state.A[i], state.B[i], sigma = merge(factors, w, global_state.max_rank, rng, fishers, (global_state.A[i], global_state.B[i]))
        else:
            state.A[i], state.B[i], sigma = merge(factors, w, global_state.max_rank, rng)
        importance[i] = float(np.sum(sigma))
    w_all = weights_arr / weights_arr.sum()
    for key in HEAD_KEYS:
        state.head[key] = sum(w * u[key].astype(np.float64) for w, u in zip(w_all, uploads)).astype(np.float32)
    return state, importance
