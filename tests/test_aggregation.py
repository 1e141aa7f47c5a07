from __future__ import annotations

import numpy as np

from fedsim.adapter_state import AdapterState
from fedsim.aggregation import aggregate, svd_refactor


def client_factors(rng, rank, out_dim=24, in_dim=20):
    return rng.standard_normal((rank, in_dim)).astype(np.float32), rng.standard_normal((out_dim, rank)).astype(np.float32)


def test_product_space_equals_weighted_mean_of_BA_across_ranks():
    rng = np.random.default_rng(0)
    factors = [client_factors(rng, r) for r in (1, 2, 4)]
    weights = np.array([0.2, 0.3, 0.5])
    a, b, sigma = svd_refactor(factors, weights, max_rank=8, rng=rng)  # 1+2+4 = 7 components <= 8: exact
    expected = sum(w * (bb.astype(np.float64) @ aa) for (aa, bb), w in zip(factors, weights))
    np.testing.assert_allclose(b.astype(np.float64) @ a, expected, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(sigma) <= 1e-9), "components come out ordered by singular value"
    np.testing.assert_allclose(a @ a.T, np.eye(8), atol=1e-5)  # A has orthonormal rows, fresh ones included
    assert np.allclose(b[:, 7], 0.0)


def test_truncation_keeps_the_best_rank_r_approximation():
    rng = np.random.default_rng(1)
    factors = [client_factors(rng, 4) for _ in range(3)]
    weights = np.full(3, 1 / 3)
    a, b, _ = svd_refactor(factors, weights, max_rank=4, rng=rng)
    full = sum(w * (bb.astype(np.float64) @ aa) for (aa, bb), w in zip(factors, weights))
    u, s, vt = np.linalg.svd(full)
    best = (u[:, :4] * s[:4]) @ vt[:4]
    np.testing.assert_allclose(b.astype(np.float64) @ a, best, rtol=1e-3, atol=1e-3)


def _state(rng, layers=2, rank=4):
    return AdapterState(
        A=[rng.standard_normal((rank, 20)).astype(np.float32) for _ in range(layers)],
        B=[np.zeros((24, rank), np.float32) for _ in range(layers)],
        head={"head.weight": np.zeros((3, 20), np.float32), "head.bias": np.zeros(3, np.float32)},
    )


def test_layer_nobody_sent_keeps_global_and_head_is_weighted_mean():
    rng = np.random.default_rng(2)
    glob = _state(rng, rank=8)  # 2 + 3 client components fit: the merge is exact
    uploads = []
    for k, rank in enumerate((2, 3)):
        a, b = client_factors(rng, rank)
        uploads.append({"A.0": a, "B.0": b, "head.weight": np.full((3, 20), k, np.float32), "head.bias": np.full(3, k, np.float32)})
    new, importance = aggregate(glob, uploads, [1.0, 3.0], "svd", rng)
    np.testing.assert_array_equal(new.A[1], glob.A[1])
    assert importance[0] > 0 and importance[1] == 0
    np.testing.assert_allclose(new.head["head.bias"], 0.75)
    expected = 0.25 * uploads[0]["B.0"].astype(np.float64) @ uploads[0]["A.0"] + 0.75 * uploads[1]["B.0"].astype(np.float64) @ uploads[1]["A.0"]
    np.testing.assert_allclose(new.delta(0), expected, rtol=1e-4, atol=1e-4)


def test_fedavg_factors_zero_pads():
    rng = np.random.default_rng(3)
    glob = _state(rng)
    a1, b1 = client_factors(rng, 2)
    a2, b2 = client_factors(rng, 4)
    head = {"head.weight": np.zeros((3, 20), np.float32), "head.bias": np.zeros(3, np.float32)}
    new, _ = aggregate(glob, [{"A.0": a1, "B.0": b1, **head}, {"A.0": a2, "B.0": b2, **head}], [1.0, 1.0], "fedavg-factors", rng)
    np.testing.assert_allclose(new.A[0][2:], a2[2:] / 2, rtol=1e-6)
    np.testing.assert_allclose(new.A[0][:2], (a1 + a2[:2]) / 2, rtol=1e-6)
