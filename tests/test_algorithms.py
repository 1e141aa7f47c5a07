"""Federated algorithms beyond FedAvg (fedsim/algorithms/): each against its paper's formula or an invariant."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedsim.adapter_state import AdapterState
from fedsim.aggregation import Aggregated
from fedsim.algorithms import build_algorithm
from fedsim.config import scenario_from_dict
from fedsim.ledger import ALGORITHM_STATE
from fedsim.runner import run_scenario
from fedsim.types import FedsimError
from tests.conftest import TINY, tiny_scenario

LEDGERS = ("rounds.csv", "clients.csv")


def run(tmp_path, name, **overrides):
    scenario = tiny_scenario(rounds=3, **overrides)
    run_scenario(scenario, tmp_path / name, progress=False)
    return tmp_path / name


def ledger(path, name):
    """A ledger without the columns that count the scenario's YAML (it names the algorithm) or time."""
    import csv

    with open(path / name, newline="") as fh:
        rows = list(csv.reader(fh))
    keep = [i for i, column in enumerate(rows[0]) if not column.startswith("wire_bytes")]
    return [[row[i] for i in keep] for row in rows]


@pytest.mark.parametrize("engine", ["per-client", "cohort"])
def test_fedprox_mu_0_and_fedavgm_momentum_0_lr_1_reproduce_fedavg_exactly(tmp_path, engine):
    train = {**TINY["train"], "engine": engine}
    base = run(tmp_path, "fedavg", train=train, channel={"kind": "awgn", "snr_db": 10}, quantization={"bits_per_param": 8})
    for name, algorithm in {"fedprox": {"name": "fedprox", "mu": 0.0}, "fedavgm": {"name": "fedavgm", "momentum": 0.0, "server_lr": 1.0}}.items():
        other = run(tmp_path, name, train=train, channel={"kind": "awgn", "snr_db": 10}, quantization={"bits_per_param": 8}, algorithm=algorithm)
        for name_ in LEDGERS:
            assert ledger(other, name_) == ledger(base, name_), f"{name} {name_} differs from fedavg's"


def test_fedprox_pulls_the_clients_towards_the_global_adapter(tmp_path):
    """A large mu keeps every client's update smaller than FedAvg's: the proximal term acts."""
    base = run(tmp_path, "fedavg")
    prox = run(tmp_path, "fedprox", algorithm={"name": "fedprox", "mu": 1000.0})
    import pandas as pd

    a, b = pd.read_csv(base / "clients.csv"), pd.read_csv(prox / "clients.csv")
    assert (a["train_loss"].iloc[:3] == b["train_loss"].iloc[:3]).all()  # round 1's 2 losses come before any proximal pull acts
    assert not np.allclose(a["train_loss"], b["train_loss"])


def test_scaffold_control_variates_sum_as_the_paper_says(tmp_path):
    """With every upload delivered in float32, c = (1/N) Σ_i c_i after every round (Karimireddy et al., eq. (5)),
    the controls are metered as an upload the size of the update, and round 1 (c = c_i = 0) is FedAvg's."""
    common = dict(aggregation={"method": "fedavg-factors", "average": "updates"}, channel={"kind": "awgn"}, quantization={"bits_per_param": 32})
    path = run(tmp_path, "scaffold", algorithm={"name": "scaffold"}, **common)
    state = load_file(str(path / ALGORITHM_STATE))
    n = TINY["clients"]["num_clients"]
    clients = sorted({int(k.split(".")[1]) for k in state if k.startswith("c_i.")})
    assert 1 < len(clients) <= n
    keys = [k[2:] for k in state if k.startswith("c.")]
    assert any(np.abs(state["c." + k]).max() > 1e-6 for k in keys)
    for key in keys:
        mean = sum(state[f"c_i.{c}.{key}"].astype(np.float64) for c in clients) / n
        np.testing.assert_allclose(state["c." + key], mean, rtol=1e-5, atol=1e-7)

    import pandas as pd

    rows = pd.read_csv(path / "clients.csv")
    assert (rows["bytes_up_control"] * 2 == rows["bytes_up_adapter"]).all()  # Δc_i has the update's shapes
    fedavg = run(tmp_path, "fedavg", **common)
    assert ledger(fedavg, "rounds.csv")[1][1:3] == ledger(path, "rounds.csv")[1][1:3]  # round 1: accuracy, loss


def _state(rng, rank=4, shapes=((6, 5), (7, 6))):
    a = [rng.standard_normal((rank, i)).astype(np.float32) for _, i in shapes]
    b = [rng.standard_normal((o, rank)).astype(np.float32) for o, _ in shapes]
    return AdapterState(a, b, {"head.weight": rng.standard_normal((3, 5)).astype(np.float32), "head.bias": np.zeros(3, np.float32)})


def _moved(state, rng, scale=0.1):
    new = state.copy()
    new.A = [a + scale * rng.standard_normal(a.shape).astype(np.float32) for a in new.A]
    new.B = [b + scale * rng.standard_normal(b.shape).astype(np.float32) for b in new.B]
    new.head = {k: v + scale * rng.standard_normal(v.shape).astype(np.float32) for k, v in new.head.items()}
    return new


def _flat(state):
    return np.concatenate([*(a.ravel() for a in state.A), *(b.ravel() for b in state.B), *(v.ravel() for v in state.head.values())]).astype(np.float64)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_server_optimisers_match_reddi_et_al_algorithm_2_on_hand_made_pseudo_gradients(name):
    """Factor space (fedavg-factors): three rounds against the formulas written out here."""
    from fedsim.algorithms import ALGORITHMS

    rng = np.random.default_rng(0)
    config = ALGORITHMS[name][0](server_lr=0.3)
    algorithm = build_algorithm(config, "fedavg-factors", num_clients=4)
    x = _state(rng)
    algorithm.setup(x)
    m = np.zeros_like(_flat(x))
    v = np.full_like(m, getattr(config, "tau", 0.0) ** 2)
    expected = _flat(x)
    for _ in range(3):
        aggregate = _moved(x, rng)
        delta = _flat(aggregate) - _flat(x)
        if name == "fedavgm":
            m = config.momentum * m + delta
            expected = expected + config.server_lr * m
        else:
            m = config.beta_1 * m + (1 - config.beta_1) * delta
            if name == "fedadam":
                v = config.beta_2 * v + (1 - config.beta_2) * delta**2
            elif name == "fedyogi":
                v = v - (1 - config.beta_2) * delta**2 * np.sign(v - delta**2)
            else:
                v = v + delta**2
            expected = expected + config.server_lr * m / (np.sqrt(v) + config.tau)
        out = algorithm.server_update(x, Aggregated(aggregate, np.zeros(2), 0.0), [{}], [1.0])
        x = out.state
        np.testing.assert_allclose(_flat(x), expected, rtol=1e-5, atol=1e-6)


def test_server_momentum_acts_in_product_space_with_svd():
    """svd re-bases the factors every round, so FedAvgM's velocity lives on W = B A: after two rounds
    W = W_0 + eta (beta Δ_1 + Δ_2) + eta Δ_1, exactly when it fits in max_rank."""
    rng = np.random.default_rng(1)
    algorithm = build_algorithm(scenario_from_dict({"algorithm": {"name": "fedavgm", "momentum": 0.5, "server_lr": 0.7}}).algorithm, "svd", 4)
    rank = 6
    x = _state(rng, rank=rank)
    for i in range(2):  # a global adapter of rank 2 in a rank-6 budget, so updates of rank 1 per round fit
        x.A[i][2:] = 0
    algorithm.setup(x)
    w = [x.delta(i) for i in range(2)]
    velocity = [np.zeros_like(wi) for wi in w]
    for _ in range(2):
        aggregate = x.copy()
        deltas = []
        for i in range(2):
            u, v = rng.standard_normal((x.B[i].shape[0], 1)), rng.standard_normal((1, x.A[i].shape[1]))
            deltas.append(0.1 * u @ v)
            dense = x.delta(i) + deltas[-1]
            uu, s, vt = np.linalg.svd(dense, full_matrices=False)
            aggregate.A[i], aggregate.B[i] = vt[:rank].astype(np.float32), (uu[:, :rank] * s[:rank]).astype(np.float32)
        x = algorithm.server_update(x, Aggregated(aggregate, np.zeros(2), 0.0), [{}], [1.0]).state
        for i in range(2):
            velocity[i] = 0.5 * velocity[i] + (aggregate.delta(i) - (w[i]))
            w[i] = w[i] + 0.7 * velocity[i]
            np.testing.assert_allclose(x.delta(i), w[i], rtol=1e-4, atol=1e-5)


def test_a_round_that_aggregated_nothing_leaves_the_server_optimiser_alone():
    rng = np.random.default_rng(2)
    algorithm = build_algorithm(scenario_from_dict({"algorithm": {"name": "fedadam"}}).algorithm, "svd", 4)
    x = _state(rng)
    out = algorithm.server_update(x, Aggregated(x, np.zeros(2), 0.0), [], [])
    assert out.state is x and algorithm.state_dict()["rounds"][0] == 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"algorithm": {"name": "scaffold"}}, "needs aggregation.method=fedavg-factors"),
        (
            {"algorithm": {"name": "scaffold"}, "aggregation": {"method": "fedavg-factors"}, "channel": {"kind": "awgn", "mode": "aircomp"}},
            "not modelled over channel.mode=aircomp",
        ),
        ({"algorithm": {"name": "fedprox"}, "adapter": {"kind": "nano"}}, "does not support"),
        ({"algorithm": {"name": "fedadam", "mu": 0.1}}, "unknown key 'algorithm.mu'"),
        ({"algorithm": {"name": "fedadam", "beta_2": 1.0}}, "algorithm.beta_2"),
    ],
)
def test_algorithm_misconfigurations_are_one_line(overrides, message):
    with pytest.raises(FedsimError) as err:
        scenario_from_dict({"model": {"backbone": "tiny-random"}, **overrides})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "algorithm, extra",
    [
        (
            {"name": "fedadam"},
            {"channel": {"kind": "rayleigh", "snr_db": 0, "deadline_s": 0.05}, "quantization": {"bits_per_param": 4}, "policy": {"name": "channel-greedy"}},
        ),
        (
            {"name": "fedyogi"},
            {
                "channel": {"kind": "awgn", "snr_db": 10, "mode": "aircomp"},
                "aggregation": {"method": "fedavg-factors"},
                "policy": {"name": "adalora", "tinit": 0, "tfinal": 1},
            },
        ),
        (
            {"name": "scaffold"},
            {
                "channel": {"kind": "rayleigh", "snr_db": 0, "deadline_s": 0.25, "packet_error": "threshold", "per_m": 1.0},
                "quantization": {"bits_per_param": 8},
                "aggregation": {"method": "fedavg-factors"},
                "policy": {"name": "channel-greedy"},
            },
        ),
        ({"name": "fedprox", "mu": 0.1}, {"policy": {"name": "ppo"}, "channel": {"kind": "rayleigh", "snr_db": 5}, "quantization": {"bits_per_param": 16}}),
    ],
)
def test_algorithms_compose_with_policies_quantisation_losses_and_aircomp(tmp_path, algorithm, extra):
    """Heterogeneous ranks, 4/8-bit uploads, updates lost to the deadline, over-the-air aggregation: the run
    finishes with finite metrics, and a round that lost every update keeps the global adapter."""
    import pandas as pd

    path = run(tmp_path, "run", algorithm=algorithm, **extra)
    rounds, clients = pd.read_csv(path / "rounds.csv"), pd.read_csv(path / "clients.csv")
    assert np.isfinite(rounds["loss"]).all()
    if algorithm["name"] == "scaffold":
        # channel-greedy budgets the doubled upload (no update is late); a lost upload loses its control variates too
        lost = clients["drop_reason"] == "packet-error"
        assert not (clients["drop_reason"] == "deadline").any() and lost.any() and clients["delivered"].any()
        assert (clients.loc[lost, "bytes_up_control"] * 2 == clients.loc[lost, "bytes_up_adapter"]).all()
    elif "deadline_s" in extra.get("channel", {}):
        assert (clients["drop_reason"] == "deadline").any() and clients["delivered"].any()
