"""Aggregation across ranks: product-space exactness, truncation, and the zero-training invariant."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fedsim.adapter_state import AdapterState, truncate
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


def _state(rng, layers=2, rank=4, trained=False):
    """A global adapter; `trained`: B != 0, as after some rounds (B = 0 is LoRA's initialisation)."""
    return AdapterState(
        A=[rng.standard_normal((rank, 20)).astype(np.float32) for _ in range(layers)],
        B=[(rng.standard_normal((24, rank)) if trained else np.zeros((24, rank))).astype(np.float32) for _ in range(layers)],
        head={"head.weight": rng.standard_normal((3, 20)).astype(np.float32), "head.bias": rng.standard_normal(3).astype(np.float32)},
    )


def test_layer_nobody_sent_keeps_global_and_head_is_weighted_mean():
    rng = np.random.default_rng(2)
    glob = _state(rng, rank=8)  # 2 + 3 client components fit: the merge is exact
    uploads = []
    for k, rank in enumerate((2, 3)):
        a, b = client_factors(rng, rank)
        uploads.append({"A.0": a, "B.0": b, "head.weight": np.full((3, 20), k, np.float32), "head.bias": np.full(3, k, np.float32)})
    new, importance, _ = aggregate(glob, uploads, [1.0, 3.0], "svd", rng, average="models")
    np.testing.assert_array_equal(new.A[1], glob.A[1])
    assert importance[0] > 0 and importance[1] == 0
    np.testing.assert_allclose(new.head["head.bias"], 0.75)
    expected = 0.25 * uploads[0]["B.0"].astype(np.float64) @ uploads[0]["A.0"] + 0.75 * uploads[1]["B.0"].astype(np.float64) @ uploads[1]["A.0"]
    np.testing.assert_allclose(new.delta(0), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["svd", "fedavg-factors"])
def test_a_layer_nobody_sent_keeps_the_importance_of_its_product_and_so_does_a_round_without_uploads(method):
    """Importance is the singular-value mass of the new global product, every layer: a layer no update
    touched keeps its product, so it keeps its mass (it read 0, and a policy sharing rank by it cut the layer)."""
    rng = np.random.default_rng(5)
    glob = _state(rng, layers=3, rank=8, trained=True)
    expected = [np.linalg.svd(glob.delta(i).astype(np.float64), compute_uv=False).sum() for i in range(3)]
    a, b = client_factors(rng, 2)
    head = {key: np.zeros_like(value) for key, value in glob.head.items()}
    _, importance, _ = aggregate(glob, [{"A.0": a, "B.0": b, **head}], [1.0], method, rng, average="updates")
    assert importance[0] > 0
    np.testing.assert_allclose(importance[1:], expected[1:], rtol=1e-6)
    _, nothing, _ = aggregate(glob, [], [], method, rng, average="updates")
    np.testing.assert_allclose(nothing, expected, rtol=1e-6)


def test_fedavg_factors_zero_pads():
    rng = np.random.default_rng(3)
    glob = _state(rng)
    a1, b1 = client_factors(rng, 2)
    a2, b2 = client_factors(rng, 4)
    head = {"head.weight": np.zeros((3, 20), np.float32), "head.bias": np.zeros(3, np.float32)}
    new, _, _ = aggregate(glob, [{"A.0": a1, "B.0": b1, **head}, {"A.0": a2, "B.0": b2, **head}], [1.0, 1.0], "fedavg-factors", rng, average="models")
    np.testing.assert_allclose(new.A[0][2:], a2[2:] / 2, rtol=1e-6)
    np.testing.assert_allclose(new.A[0][:2], (a1 + a2[:2]) / 2, rtol=1e-6)


# --- average: updates ----------------------------------------------------------------------------

RANK_MIXES = [(2, 2, 2), (2, 4, 8), (0, 1, 8), (8, 8, 8), (1, 0, 0)]
METHODS = ["svd", "fedavg-factors", "fisher"]


def _zero_updates(rng, glob, ranks_per_client, method):
    """What clients that did not train send in `average: updates`: zero changes (and, for fisher, a Fisher estimate)."""
    uploads = []
    for ranks in ranks_per_client:
        payload = {k: np.zeros_like(v) for k, v in truncate(glob, ranks).items()}
        if method == "fisher":
            payload |= {f"F.{k}": rng.random(v.shape).astype(np.float32) for k, v in payload.items() if k.startswith(("A.", "B."))}
        uploads.append(payload)
    return uploads


@pytest.mark.parametrize("method, ranks", list(itertools.product(METHODS, RANK_MIXES)))
def test_zero_local_training_leaves_the_global_adapter_unchanged(method, ranks):
    """The invariant of issue 13: clients that do not train change nothing, whatever their ranks."""
    rng = np.random.default_rng(4)
    glob = _state(rng, layers=2, rank=8, trained=True)
    # Each client gets one rank mix row; layer 1 gets the mix reversed, so layers differ.
    per_client = [(r, ranks[::-1][k]) for k, r in enumerate(ranks)]
    uploads = _zero_updates(rng, glob, per_client, method)
    new, _, truncated = aggregate(glob, uploads, [10.0, 20.0, 30.0], method, np.random.default_rng(5), average="updates")
    for i in range(2):
        if method == "svd":  # refactored: the product (the function the adapter computes) is what must not move
            np.testing.assert_allclose(new.delta(i), glob.delta(i), rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(new.A[i], glob.A[i])
            np.testing.assert_array_equal(new.B[i], glob.B[i])
    for key in glob.head:
        np.testing.assert_array_equal(new.head[key], glob.head[key])
    assert truncated == 0.0


def test_replacing_with_the_models_mean_erases_what_nobody_trained():
    """Why `updates` is the default: FlexLoRA-style replacement shrinks a rank-8 global update when
    every client is at rank 2 and nobody trains (issue 13 measured 71%)."""
    rng = np.random.default_rng(6)
    glob = _state(rng, layers=1, rank=8, trained=True)
    sent = [truncate(glob, [2]) for _ in range(3)]  # untrained clients send back what they received
    new, _, _ = aggregate(glob, sent, [1.0, 1.0, 1.0], "svd", rng, average="models")
    change = np.linalg.norm(new.delta(0) - glob.delta(0)) / np.linalg.norm(glob.delta(0))
    assert change > 0.5
    kept, _, _ = aggregate(glob, _zero_updates(rng, glob, [[2]] * 3, "svd"), [1.0, 1.0, 1.0], "svd", rng, average="updates")
    np.testing.assert_allclose(kept.delta(0), glob.delta(0), rtol=1e-5, atol=1e-5)


def test_svd_updates_add_the_weighted_mean_change_in_product_space():
    rng = np.random.default_rng(7)
    glob = _state(rng, layers=1, rank=8, trained=True)
    g_a, g_b = glob.A[0].astype(np.float64), glob.B[0].astype(np.float64)
    weights = np.array([1.0, 3.0])
    uploads, expected = [], g_b @ g_a
    for w, r in zip(weights / weights.sum(), (2, 4)):
        d_a, d_b = (0.1 * x for x in client_factors(rng, r))
        uploads.append({"A.0": d_a, "B.0": d_b, "head.weight": np.zeros((3, 20), np.float32), "head.bias": np.zeros(3, np.float32)})
        trained = (g_b[:, :r] + d_b) @ (g_a[:r] + d_a)
        expected = expected + w * (trained - g_b[:, :r] @ g_a[:r])
    new, _, truncated = aggregate(glob, uploads, list(weights), "svd", rng, average="updates")
    u, s, vt = np.linalg.svd(expected)
    best = (u[:, :8] * s[:8]) @ vt[:8]  # the change has rank up to 8 + 2 + 4: the best rank-8 approximation
    np.testing.assert_allclose(new.delta(0), best, rtol=1e-4, atol=1e-4)
    discarded = np.sqrt(np.sum(s[8:] ** 2)) / np.linalg.norm(expected - g_b @ g_a)
    assert truncated == pytest.approx(discarded, rel=1e-6)
    assert 0 < truncated < 1


def test_fedavg_factor_updates_leave_untrained_components():
    rng = np.random.default_rng(8)
    glob = _state(rng, layers=1, rank=4, trained=True)
    d_a, d_b = client_factors(rng, 2)
    head = {"head.weight": np.ones((3, 20), np.float32), "head.bias": np.ones(3, np.float32)}
    new, _, _ = aggregate(glob, [{"A.0": d_a, "B.0": d_b, **head}], [1.0], "fedavg-factors", rng, average="updates")
    np.testing.assert_allclose(new.A[0][:2], glob.A[0][:2] + d_a, rtol=1e-6)
    np.testing.assert_array_equal(new.A[0][2:], glob.A[0][2:])
    np.testing.assert_allclose(new.head["head.bias"], glob.head["head.bias"] + 1.0, rtol=1e-6)


# --- end to end: the real clients, quantisation and engines ---------------------------------------


@pytest.mark.parametrize(
    "method, engine, bits, channel_mode, kind",
    [
        ("svd", "per-client", 32, "digital", "lora"),
        ("svd", "cohort", 4, "digital", "lora"),
        ("fedavg-factors", "cohort", 8, "digital", "lora"),
        ("fisher", "per-client", 16, "digital", "lora"),
        ("fedavg-factors", "per-client", 32, "aircomp", "lora"),
        ("fisher", "per-client", 8, "digital", "nano"),  # nano's head stays on the server, yet travels as a change too
        ("svd", "per-client", 32, "digital", "nano"),
    ],
)
def test_a_round_without_local_training_leaves_the_global_adapter_unchanged(tiny, method, engine, bits, channel_mode, kind):
    """lr = 0 through the whole path: truncation, the ClientApp, its upload of changes, quantisation, decoding, merging."""
    from fedsim.client_app import app as client_app
    from fedsim.inline_grid import InlineGrid
    from fedsim.server_app import build_strategy, run_train_round

    channel = {"mode": channel_mode} | ({"kind": "awgn", "aircomp": {"noise": False}} if channel_mode == "aircomp" else {})
    scenario = tiny(
        train={"local_steps": 2, "batch_size": 8, "lr": 0.0, "head_lr": 0.0, "engine": engine},
        aggregation={"method": method},
        policy={"name": "fixed", "ranks": [2, 8, 0, 1] if kind == "lora" else [3, 0]},
        channel=channel,
        quantization={"bits_per_param": bits},
        adapter={"kind": kind},
    )
    strategy = build_strategy(scenario)
    rng = np.random.default_rng(9)
    trained = strategy.global_state.copy()  # as after some rounds: B != 0
    trained.B = [rng.standard_normal(b.shape).astype(np.float32) for b in trained.B]
    strategy.global_state = trained.copy()
    grid = InlineGrid(client_app, scenario.clients.num_clients)
    routing = {c: 1000 + c for c in range(scenario.clients.num_clients)}
    result = run_train_round(grid, strategy, 1, routing, None)
    assert result.row.updates_aggregated == 3
    new = strategy.global_state
    for i in range(len(new.A)):
        if method == "svd":
            np.testing.assert_allclose(new.delta(i), trained.delta(i), rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(new.A[i], trained.A[i])
            np.testing.assert_array_equal(new.B[i], trained.B[i])
    for key in trained.head:
        np.testing.assert_array_equal(new.head[key], trained.head[key])


def test_layers_merged_in_threads_equal_a_sequential_merge_and_draw_the_same_random_numbers(monkeypatch):
    """`models` with rank-1 senders leaves fewer components than the rank on some layers, so those layers draw fresh
    directions from the round's generator: the threaded merge must give the sequential loop's result to the bit,
    and leave the generator where the sequential loop leaves it."""
    import fedsim.aggregation as aggregation

    monkeypatch.setattr(aggregation, "PARALLEL_MERGE_ELEMENTS", 0)  # threads even for this small a round
    rng = np.random.default_rng(5)
    glob = _state(rng, layers=6, rank=4, trained=True)
    uploads = []
    for ranks in ([1, 4, 0, 1, 2, 4], [1, 3, 1, 0, 1, 4]):
        upload = {"head.weight": rng.standard_normal(glob.head["head.weight"].shape).astype(np.float32)}
        upload["head.bias"] = rng.standard_normal(glob.head["head.bias"].shape).astype(np.float32)
        for i, r in enumerate(ranks):
            if r:
                upload[f"A.{i}"], upload[f"B.{i}"] = client_factors(rng, r, out_dim=glob.B[i].shape[0], in_dim=glob.A[i].shape[1])
        uploads.append(upload)

    def sequential(jobs, rng, parallel=True):
        return {i: job(rng) for i, job in jobs.items()}

    results = {}
    for name, threaded in {"threads": True, "sequential": False}.items():
        if not threaded:
            monkeypatch.setattr(aggregation, "merge_layers", sequential)
        generator = np.random.default_rng(11)
        results[name] = (aggregate(glob, uploads, [0.3, 0.7], "svd", generator, average="models"), generator.random())
    (threads, after_threads), (plain, after_plain) = results["threads"], results["sequential"]
    assert after_threads == after_plain  # the same draws, in the same order
    for a, b in zip(threads.state.A + threads.state.B, plain.state.A + plain.state.B):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(threads.importance, plain.importance)
    assert threads.truncated_fraction == plain.truncated_fraction
    # Some layer really drew fresh directions: rank-1 senders only, so 2 components for a rank of 4.
    assert np.allclose(threads.state.B[0][:, 2:], 0.0)
