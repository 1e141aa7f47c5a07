"""Rank policies: bounds for any observation, DDIM + classifier-free guidance, checkpoints, the gymnasium env,
and airllm's learned channel awareness."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, tiny_scenario
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.cli import main
from fedsim.config import scenario_from_dict
from fedsim.rl.synthetic import ChannelRounds, channel_slots
from fedsim.runtime import get_runtime
from fedsim.types import ChannelStates, FedsimError, Observation
from policies.adalora import AdaLoraConfig, AdaLoraPolicy, cubic_budget, share_budget
from policies.airllm import AirLlmConfig, AirLlmPolicy, Denoiser, ddim_sample, denoising_loss, make_scheduler
from policies.channel_greedy import ChannelGreedyConfig, ChannelGreedyPolicy
from policies.common import RewardConfig, fitting_rank, round_reward
from policies.fixed import FixedConfig, FixedPolicy
from policies.ppo import PpoConfig, PpoPolicy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL_AIRLLM = {"coarse_dim": 2, "hidden": 16, "denoiser_hidden": 32, "denoiser_blocks": 1, "sampling_steps": 3, "train_timesteps": 20}


def make_observation(snr_db, rate_bps, n_layers=4, max_rank=8, round_=1, total=10, importance=None, deadline_s=float("inf"), ppr=100, fixed=50):
    n = len(snr_db)
    channel = ChannelStates(np.arange(n), np.asarray(snr_db, float), np.ones(n), np.full(n, 1e6 / n), np.asarray(rate_bps, float))
    return Observation(
        round=round_,
        total_rounds=total,
        channel=channel,
        layer_names=[f"layer{i}" for i in range(n_layers)],
        max_rank=max_rank,
        params_per_rank=np.full(n_layers, ppr),
        fixed_params=fixed,
        bits_per_param=32,
        last_ranks=np.full((n, n_layers), max_rank),
        last_loss=float("nan"),
        last_accuracy=float("nan"),
        layer_importance=np.zeros(n_layers) if importance is None else np.asarray(importance, float),
        data_stats=np.tile([7.0, 0.01], (n, 1)),
        deadline_s=deadline_s,
    )


# --- rank bounds, for any observation -----------------------------------------------------------

finite = st.floats(-1e12, 1e12, allow_nan=False)


@st.composite
def observations(draw):
    n = draw(st.integers(1, 5))
    layers = draw(st.integers(1, 5))
    max_rank = draw(st.integers(1, 16))
    total = draw(st.integers(1, 30))
    channel = ChannelStates(
        client_ids=np.arange(n),
        snr_db=np.array(draw(st.lists(st.floats(-60, 80), min_size=n, max_size=n))),
        fading_gain=np.array(draw(st.lists(st.floats(0, 100), min_size=n, max_size=n))),
        bandwidth_hz=np.array(draw(st.lists(st.floats(0, 1e8), min_size=n, max_size=n))),
        rate_bps=np.array(draw(st.lists(st.floats(0, 1e12), min_size=n, max_size=n))),
    )
    return Observation(
        round=draw(st.integers(1, total)),
        total_rounds=total,
        channel=channel,
        layer_names=[f"l{i}" for i in range(layers)],
        max_rank=max_rank,
        params_per_rank=np.array(draw(st.lists(st.integers(1, 10**6), min_size=layers, max_size=layers))),
        fixed_params=draw(st.integers(0, 10**6)),
        bits_per_param=draw(st.sampled_from([4, 8, 16, 32])),
        last_ranks=np.array(draw(st.lists(st.integers(0, max_rank), min_size=n * layers, max_size=n * layers))).reshape(n, layers),
        last_loss=draw(st.one_of(st.just(float("nan")), st.floats(0, 1e6))),
        last_accuracy=draw(st.one_of(st.just(float("nan")), st.floats(0, 1))),
        layer_importance=np.array(draw(st.lists(st.one_of(st.floats(0, 1e9), st.just(float("nan"))), min_size=layers, max_size=layers))),
        data_stats=np.array(draw(st.lists(st.floats(0, 20), min_size=2 * n, max_size=2 * n))).reshape(n, 2),
        deadline_s=draw(st.one_of(st.just(float("inf")), st.floats(1e-6, 1e4))),
    )


POLICY_FACTORIES = {
    "fixed": lambda: FixedPolicy(FixedConfig(rank=5)),
    "channel-greedy": lambda: ChannelGreedyPolicy(ChannelGreedyConfig(deadline_s=0.05)),
    "adalora": lambda: AdaLoraPolicy(AdaLoraConfig(tinit=0, tfinal=1)),
    "adalora-rate": lambda: AdaLoraPolicy(AdaLoraConfig(rate_scaling=True, init_budget=40, target_budget=3)),
    "ppo": lambda: PpoPolicy(PpoConfig(hidden=8)),
    "airllm": lambda: AirLlmPolicy(AirLlmConfig(**SMALL_AIRLLM, min_rank=2)),
    "airllm-learning": lambda: AirLlmPolicy(AirLlmConfig(**SMALL_AIRLLM, learn=True, warmup_transitions=0, n_steps=2)),
}


@pytest.mark.parametrize("name", POLICY_FACTORIES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(observation=observations())
def test_every_policy_returns_integer_ranks_within_bounds(name, observation):
    policy = POLICY_FACTORIES[name]()
    for _ in range(2):  # twice: stateful policies (adalora's EMA, airllm's learning) see a second round
        ranks = np.asarray(policy.ranks(observation))
        assert ranks.shape == (observation.n_clients, observation.n_layers)
        assert np.issubdtype(ranks.dtype, np.integer)
        assert ranks.min() >= 0 and ranks.max() <= observation.max_rank
        policy.feedback(-1.0, {"done": False})


# --- the simple policies' rules -------------------------------------------------------------------


def test_channel_greedy_picks_the_largest_uniform_rank_that_meets_the_deadline():
    # rank r costs (4 * 100 * r + 50) * 32 bits; at 1 Mbit/s and 0.1 s, 100 kbit fit: r = floor((3125 - 50) / 400) = 7
    observation = make_observation([0.0, 20.0, 40.0], [1e6, 1e5, 1e9], deadline_s=0.1)
    ranks = ChannelGreedyPolicy(ChannelGreedyConfig()).ranks(observation)
    assert ranks[:, 0].tolist() == [7, 0, 8]
    assert (ranks == ranks[:, :1]).all()
    for r, rate in zip(ranks[:, 0], [1e6, 1e5, 1e9]):
        assert (4 * 100 * r + 50) * 32 <= rate * 0.1 or r == 0
    no_deadline = ChannelGreedyPolicy(ChannelGreedyConfig()).ranks(make_observation([0.0], [1.0]))
    assert (no_deadline == 8).all()


def test_channel_greedy_budgets_with_the_rate_an_upload_is_sent_at_under_a_target_rate(tmp_path):
    """A preset's fixed 100 kb/s target rate, far below the 30 dB capacity: airtime is bits / 100 kb/s, so greedy must
    fit its ranks to that, or it picks rank 8 by the capacity and every upload misses the deadline.
    8-bit: rank 8 costs (8 * 256 + 2541) * 8 bits + scales ~ 37 kbit = 0.37 s > the 0.3 s deadline."""
    from fedsim.runner import run_scenario

    scenario = tiny_scenario(channel={"preset": "good", "deadline_s": 0.3}, quantization={"bits_per_param": 8}, policy={"name": "channel-greedy"})
    run_scenario(scenario, tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "clients.csv", newline="") as fh:
        clients = list(csv.DictReader(fh))
    assert not [c for c in clients if c["drop_reason"] == "deadline"]
    assert {c["ranks"] for c in clients} == {"4 4 4 4"}  # floor((30 kbit - 10 scales * 32 bits) / 8 - 2541) / 256) = 4
    assert all(float(c["latency_s"]) <= 0.3 and float(c["rate_bps"]) > 1e6 for c in clients)


def test_what_fits_starts_after_local_training_and_in_tdma_after_the_previous_slot():
    """channel-greedy's ranks against the real channel's timing (`channels.access`): with local training time before
    the upload and sequential TDMA slots, no upload it sizes is late, and one rank more for any client (the others
    unchanged) makes that client late: the largest that fits (in TDMA, where no earlier slot sent rank 0, whose scales
    are over-counted). Ignoring compute and slots (as fitting_rank did) the same rounds send late uploads. 2,000 Rayleigh rounds of 3 clients at 5 dB, 1.5 s deadline, MiniLM's layout,
    8-bit uploads, 64 samples at 1e7 cycles each on log-normal CPUs (0.64 s at the nominal 1 GHz)."""
    from dataclasses import replace

    from channels import ChannelConfig, build_channel

    layers, per_rank, head, bits_per_param, samples = 12, 768, 29_645, 8, np.full(3, 64)
    compute = {"enabled": True, "cycles_per_sample": 1e7, "cpu_hz": 1e9, "speed_sigma": 0.5}
    greedy = ChannelGreedyPolicy(ChannelGreedyConfig())

    def upload_bits(ranks):
        return ((ranks * layers * per_rank + head) * bits_per_param + 32 * (2 * layers * (ranks > 0) + 2)).astype(float)

    for access in ("tdma", "fdma-equal"):
        channel = build_channel(ChannelConfig(kind="rayleigh", snr_db=5.0, bandwidth_hz=1e6, deadline_s=1.5, access=access, compute=compute), seed=3)
        channel.set_data_sizes(np.full(20, 100))
        rng, late_before, binding = np.random.default_rng(0), 0, 0
        for round_ in range(1, 2001):
            states = channel.draw(round_, np.sort(rng.choice(20, 3, replace=False)), rng)
            observation = replace(
                make_observation(states.snr_db, states.rate_bps, n_layers=layers, ppr=per_rank, fixed=head, deadline_s=1.5),
                channel=states,
                bits_per_param=bits_per_param,
                compute_s=channel.compute_seconds(states.client_ids, samples),
                sequential_uploads=channel.sequential_uploads,
            )
            fits = fitting_rank(observation)
            ranks = greedy.ranks(observation)[:, 0]
            sent = channel.uplink(states, upload_bits(ranks), rng, samples)
            assert not [k for k in range(3) if fits[k] >= 0 and sent[k].drop_reason == "deadline"], (round_, fits, sent)
            for k in np.flatnonzero((fits >= 0) & (fits < 8)):
                if channel.sequential_uploads and (ranks[states.slot < states.slot[k]] == 0).any():
                    continue  # a rank-0 upload sends fewer scales than budgeted (an upper bound): the later slots start early
                more = ranks.copy()
                more[k] += 1
                assert channel.uplink(states, upload_bits(more), rng, samples)[k].drop_reason == "deadline", (round_, k, fits)
                binding += 1
            naive = greedy.ranks(replace(observation, compute_s=np.zeros(0), sequential_uploads=False))[:, 0]
            late_before += sum(t.drop_reason == "deadline" for t in channel.uplink(states, upload_bits(naive), rng, samples))
        assert channel.sequential_uploads == (access == "tdma")
        assert binding > 900 and late_before > 3000, (access, binding, late_before)  # tdma 1,133 and 4,238; fdma 3,318 and 5,112


def test_channel_greedy_sends_no_late_upload_in_a_run_with_tdma_and_local_training(tmp_path):
    """The strategy gives the policy the scheduled training time and the slot order. A tiny run with both: 500 kb/s
    (0 dB AWGN on 500 kHz), 1 s deadline, 16 samples at 1e6 cycles on 100 MHz CPUs (0.16 s), rank r costing
    (256 r + 2541) · 32 bits. The first two slots send rank 8 (0.294 s each, ending at 0.748 s), the third what
    fits in the 0.252 s left: floor((126,000 - 81,312) / 8,192) = 5. Rank 8 there would end at 1.04 s, late.
    Which client has the third slot is drawn each round."""
    from fedsim.runner import run_scenario

    channel = {
        "kind": "awgn",
        "snr_db": 0,
        "bandwidth_hz": 5e5,
        "deadline_s": 1.0,
        "access": "tdma",
        "compute": {"enabled": True, "cycles_per_sample": 1e6, "cpu_hz": 1e8},
    }
    run_scenario(tiny_scenario(channel=channel, policy={"name": "channel-greedy"}), tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "clients.csv", newline="") as fh:
        clients = list(csv.DictReader(fh))
    assert not [c for c in clients if c["drop_reason"] == "deadline"]
    for round_ in ("1", "2"):
        by_slot = sorted((float(c["tdma_slot"]), c["ranks"]) for c in clients if c["round"] == round_)
        assert by_slot == [(0.0, "8 8 8 8"), (1.0, "8 8 8 8"), (2.0, "5 5 5 5")]
    assert all(float(c["compute_s"]) == pytest.approx(0.16) for c in clients)


def test_over_the_air_what_fits_is_the_common_rank_whose_shared_slot_meets_the_deadline(tmp_path):
    """AirComp: one analog slot of ceil(S / 2) / B for the S entries the senders span. tiny-random's rank r spans
    S = 256 r + 2541 entries; on B = 10 kHz after 16 samples at 1e6 cycles on 1 GHz CPUs (0.016 s), a 0.2 s deadline
    fits 2 floor(0.184 * 1e4) = 3,680 entries: r = floor((3680 - 2541) / 256) = 4 for every client, sent in time
    (rank 5 needs a 0.191 s slot, ending at 0.207 s). Priced as a digital upload (32-bit entries at the capacity,
    as fitting_rank did) not even rank 0 fits, and every client sent rank 0."""
    from fedsim.runner import run_scenario

    channel = {
        "kind": "awgn",
        "snr_db": 10,
        "bandwidth_hz": 1e4,
        "deadline_s": 0.2,
        "mode": "aircomp",
        "compute": {"enabled": True, "cpu_hz": 1e9, "cycles_per_sample": 1e6},
    }
    scenario = tiny_scenario(channel=channel, aggregation={"method": "fedavg-factors"}, policy={"name": "channel-greedy"})
    run_scenario(scenario, tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "clients.csv", newline="") as fh:
        clients = list(csv.DictReader(fh))
    assert {c["ranks"] for c in clients} == {"4 4 4 4"}
    assert all(c["delivered"] == "1" and not c["drop_reason"] for c in clients), [(c["delivered"], c["drop_reason"]) for c in clients]
    with open(tmp_path / "run" / "rounds.csv", newline="") as fh:
        rounds = list(csv.DictReader(fh))
    slot = np.ceil((256 * 4 + 2541) / 2) / 1e4
    assert [float(r["uplink_latency_s"]) for r in rounds] == pytest.approx([0.016 + slot] * 2)


def test_the_learning_policies_action_is_a_share_of_what_fits_and_its_top_is_channel_greedy():
    from policies.common import level_ranks, ranks_from_action

    observation = make_observation([0.0, 20.0, 40.0, -10.0], [1e6, 1e5, 1e9, 3e6], deadline_s=0.1)  # fitting ranks 7, 0, 8, 8
    greedy = ChannelGreedyPolicy(ChannelGreedyConfig()).ranks(observation)
    np.testing.assert_array_equal(ranks_from_action(np.ones(4), observation, min_rank=0), greedy)
    assert (ranks_from_action(-np.ones(4), observation, min_rank=0) == 0).all()
    assert (ranks_from_action(-np.ones(4), observation, min_rank=2) == 2).all()  # r_min wins where nothing more fits
    half = ranks_from_action(np.zeros(4), observation, min_rank=0)  # f = 1/2: half of what fits, L · f · r_fit in total
    assert half.sum(1).tolist() == [14, 0, 16, 16]
    # full_share_at 0.5: the band [0.5, 1] sends all that fits, and below it f = (a + 1) / 1.5
    for a in (0.5, 0.8):
        np.testing.assert_array_equal(ranks_from_action(np.full(4, a), observation, min_rank=0, full_share_at=0.5), greedy)
    assert ranks_from_action(np.full(4, -0.25), observation, min_rank=0, full_share_at=0.5).sum(1).tolist() == [14, 0, 16, 16]
    assert (ranks_from_action(np.full(4, 0.45), observation, min_rank=0, full_share_at=0.5).sum(1) < greedy.sum(1) + (greedy.sum(1) == 0)).all()
    # spread 1: the weights only place the remainder, so layers differ by at most one rank
    weights = np.array([[8.0, 1.0, 1.0, 1.0]] * 4)
    spread = level_ranks(np.full(4, 0.45), 4, 0, 8, weights, fitting_rank(observation), spread=1)
    assert (spread.max(1) - spread.min(1) <= 1).all() and spread.sum(1).tolist() == [13, 0, 14, 14]
    assert (spread[:, 0] >= spread[:, 1:].max(1)).all()
    free = level_ranks(np.full(4, 0.45), 4, 0, 8, weights, fitting_rank(observation))
    assert free.sum(1).tolist() == [13, 0, 14, 14] and (free.max(1) - free.min(1) > 1).any()


def test_adalora_cubic_schedule_and_importance_sharing():
    assert cubic_budget(1, 10, 32, 8, tinit=1, tfinal=2) == 32
    assert cubic_budget(10, 10, 32, 8, tinit=1, tfinal=2) == 8
    middle = [cubic_budget(t, 10, 32, 8, 1, 2) for t in range(1, 11)]
    assert all(a >= b for a, b in zip(middle, middle[1:]))
    assert middle[3] == pytest.approx(8 + 24 * (1 - 3 / 7) ** 3)
    shared = share_budget(12, np.array([10.0, 1.0, 1.0, 0.0]), max_rank=8)
    assert shared.sum() == 12 and shared[0] == 8 and shared[3] == 0  # capped at max_rank, the rest shared by importance
    policy = AdaLoraPolicy(AdaLoraConfig(init_budget=32, target_budget=8, tinit=0, tfinal=0))
    last = policy.ranks(make_observation([0.0], [1e6], importance=[4, 3, 2, 1], round_=10, total=10))
    assert last.sum() == 8 and last[0, 0] >= last[0, 3]


@pytest.mark.parametrize("scale", [1e-15, 1.0, 1e15])
def test_adalora_spends_the_whole_budget_at_any_importance_scale(scale):
    """Issue 13: real MiniLM sensitivities sum to ~1e-14, and an absolute floor gave every layer rank 1."""
    config = AdaLoraConfig(init_budget=32, target_budget=12, tinit=1, tfinal=2)
    policy, reference = AdaLoraPolicy(config), AdaLoraPolicy(config)
    rng = np.random.default_rng(0)
    for round_ in range(1, 11):
        importance = rng.random(6) + 0.1
        obs = make_observation([10.0, 0.0], [1e6, 1e6], n_layers=6, round_=round_, total=10, importance=scale * importance)
        ranks = policy.ranks(obs)
        budget = cubic_budget(round_, 10, 32, 12, 1, 2)
        assert abs(int(ranks[0].sum()) - round(budget)) <= 0, (round_, ranks[0], budget)
        unit = reference.ranks(make_observation([10.0, 0.0], [1e6, 1e6], n_layers=6, round_=round_, total=10, importance=importance))
        np.testing.assert_array_equal(ranks, unit)  # scale-invariant
    assert share_budget(7, np.array([1e-30, 2e-30, 0.0]), max_rank=8).tolist() == [2, 5, 0]


def test_reward_credits_the_delivered_rank_and_charges_cost_and_the_reference_deadline_penalty():
    """term_k = β U_k delivered_k - λ cost_k, or -P max(ρ_k, 1) when late; R = -loss + mean_k term_k."""
    config = RewardConfig(cost="latency", lam=0.5, utility=1.0, utility_curve=[(0.0, 0.0), (0.5, 0.8), (1.0, 1.0)], deadline_penalty=10.0)
    info = {
        "loss": 2.0,
        "accuracy": 0.5,
        "bits_up": [40.0, 20.0, 150.0, 30.0],
        "bits_full": [100.0] * 4,
        "rate_bps": [10.0, 10.0, 10.0, 10.0],
        "energy_j": [1.0] * 4,
        "deadline_s": 10.0,
        "drop_reasons": ["", "outage", "deadline", ""],
        "delivered": [True, False, False, True],
        "ranks": [[4, 8], [4, 4], [8, 8], [0, 4]],
        "max_rank": 8,
        "layer_importance": [3.0, 1.0],
    }
    u = np.array([0.75 * 0.8 + 0.25 * 1.0, 0.8, 1.0, 0.25 * 0.8])  # shares 0.75 / 0.25 of g(r / 8)
    expected = np.array([u[0] - 0.5 * 0.4, -0.5 * 0.2, -10.0 * 1.5, u[3] - 0.5 * 0.3])  # the outage client delivered nothing
    from policies.common import client_rewards, client_terms

    np.testing.assert_allclose(client_terms(config, info), expected)
    np.testing.assert_allclose(client_rewards(config, info), -2.0 + expected)
    assert round_reward(config, info) == pytest.approx(-2.0 + expected.mean())
    assert round_reward(config.model_copy(update={"objective": "accuracy-gain"}), {**info, "last_accuracy": 0.25}) == pytest.approx(0.25 + expected.mean())
    bytes_cost = client_terms(RewardConfig(cost="bytes", lam=1.0, utility=0.0), info)
    np.testing.assert_allclose(bytes_cost[[0, 1, 3]], [-0.4, -0.2, -0.3])
    with pytest.raises(ValueError, match="utility_curve"):
        RewardConfig(utility_curve=[(0.0, 0.0), (0.5, 1.2), (1.0, 1.0)])


def test_aggregate_share_weighting_credits_the_mean_utility_of_the_delivered_updates():
    """utility_weight: aggregate-share scales a delivered update's utility by n / n_delivered, so the round's mean
    utility term is β times the mean U_k over the delivered, however many were lost; 'update' is the plain β U_k."""
    from policies.common import client_terms

    info = {"bits_up": [10.0] * 4, "bits_full": [100.0] * 4, "rate_bps": [10.0] * 4, "deadline_s": 10.0,
            "drop_reasons": ["", "outage", "outage", ""], "delivered": [True, False, False, True],
            "ranks": [[8, 8], [8, 8], [4, 4], [2, 2]], "max_rank": 8}  # fmt: skip
    curve = [(0.0, 0.0), (1.0, 1.0)]
    plain = client_terms(RewardConfig(lam=0.0, utility=2.0, utility_curve=curve), info)
    shared = client_terms(RewardConfig(lam=0.0, utility=2.0, utility_curve=curve, utility_weight="aggregate-share"), info)
    np.testing.assert_allclose(plain, [2.0, 0.0, 0.0, 0.5])
    np.testing.assert_allclose(shared, [4.0, 0.0, 0.0, 1.0])  # 2 of 4 delivered: each weighs twice
    assert shared.mean() == pytest.approx(2.0 * np.mean([1.0, 0.25]))  # β · mean U over the delivered
    everyone = {**info, "drop_reasons": [""] * 4, "delivered": [True] * 4}
    np.testing.assert_allclose(client_terms(RewardConfig(lam=0.0, utility=2.0, utility_curve=curve, utility_weight="aggregate-share"), everyone),
                               client_terms(RewardConfig(lam=0.0, utility=2.0, utility_curve=curve), everyone))  # fmt: skip
    nobody = {**info, "drop_reasons": ["outage"] * 4, "delivered": [False] * 4}
    np.testing.assert_allclose(client_terms(RewardConfig(lam=0.0, utility_weight="aggregate-share"), nobody), [0.0] * 4)


def test_objective_credit_adds_the_delivered_updates_worth_to_the_learning_signal_only():
    """objective_credit c: a free decision learns from term_k + Σ_l s_l c(r_kl / R) · delivered_k; the scored terms
    and R are unchanged, and a malformed curve is refused."""
    from policies.common import client_terms, learning_terms

    info = {"bits_up": [10.0] * 4, "bits_full": [100.0] * 4, "rate_bps": [10.0] * 4, "deadline_s": 10.0, "loss": 2.0,
            "drop_reasons": ["", "outage", "deadline", ""], "delivered": [True, False, False, True],
            "ranks": [[8, 8], [8, 8], [4, 4], [2, 0]], "max_rank": 8, "layer_importance": [3.0, 1.0]}  # fmt: skip
    plain = RewardConfig(utility=2.0, utility_curve=[(0.0, 0.0), (1.0, 1.0)])
    credited = plain.model_copy(update={"objective_credit": [(0.0, 1.0), (0.5, 2.0), (1.0, 3.0)]})
    free = np.array([True, True, True, True])
    np.testing.assert_allclose(client_terms(credited, info), client_terms(plain, info))
    assert round_reward(credited, info) == round_reward(plain, info)
    # client 0: c(1) = 3 on both layers; client 3: shares 0.75 / 0.25 of c(2/8) = 1.5 and c(0) = 1; lost updates earn nothing
    expected = client_terms(plain, info) + np.array([3.0, 0.0, 0.0, 0.75 * 1.5 + 0.25 * 1.0])
    np.testing.assert_allclose(learning_terms(credited, info, free), expected)
    np.testing.assert_allclose(learning_terms(credited, info, ~free), [0.0] * 4)
    np.testing.assert_allclose(learning_terms(plain, info, free), client_terms(plain, info))
    for bad in ([(0.0, 1.0)], [(0.0, 1.0), (0.5, 2.0)], [(0.0, 1.0), (1.0, float("nan"))], {}, {-8: [(0.0, 1.0)]}, {float("nan"): [(0.0, 1.0), (1.0, 2.0)]}):
        with pytest.raises(ValueError, match="objective_credit"):
            RewardConfig(objective_credit=bad)
    # By SNR anchor: linear in the client's large-scale SNR between the anchors' credits, the outer ones beyond.
    by_snr = RewardConfig(utility=2.0, utility_curve=[(0.0, 0.0), (1.0, 1.0)], objective_credit={"20": [(0.0, 0.0), (1.0, 1.0)], -8: [(0.0, 1.0), (1.0, 5.0)]})
    assert list(by_snr.objective_credit) == [-8.0, 20.0]
    at_snr = {**info, "snr_db": [6.0, -8.0, 0.0, 30.0]}
    # client 0 (halfway): rank 8 earns (5 + 1) / 2 = 3; client 3 at 30 dB: 20 dB's 0.75 · 0.25 + 0.25 · 0 = 0.1875
    expected = client_terms(plain, info) + np.array([3.0, 0.0, 0.0, 0.75 * 0.25])
    np.testing.assert_allclose(learning_terms(by_snr, at_snr, free), expected)
    with pytest.raises(ValueError, match="snr_db"):
        learning_terms(by_snr, info, free)


def test_learning_ignores_forced_decisions_and_airllm_keeps_them_out_of_its_buffer():
    """A client for whom nothing above r_min fits has no choice: its learning reward is 0 (its scored term is
    unchanged), and airllm neither trains PPO on its term nor puts its pattern in the DDIM buffer."""
    from policies.common import client_terms, free_decisions, learning_terms

    observation = make_observation([0.0, 20.0, 40.0], [1e6, 1e5, 1e9], deadline_s=0.1)  # fitting ranks 7, 0, 8
    assert free_decisions(observation, min_rank=0).tolist() == [True, False, True]
    assert free_decisions(observation, min_rank=7).tolist() == [False, False, True]
    config = RewardConfig()
    info = {"bits_up": [9e4, 5e6, 1e5], "bits_full": [1.2e5] * 3, "rate_bps": [1e6, 1e5, 1e9], "deadline_s": 0.1,
            "drop_reasons": ["", "deadline", ""], "delivered": [True, False, True], "ranks": [[7] * 4, [0] * 4, [8] * 4], "max_rank": 8}  # fmt: skip
    scored = client_terms(config, info)
    assert scored[1] == pytest.approx(-10 * 5e6 / (1e5 * 0.1))  # -5,000: what the ledger's reward still counts
    np.testing.assert_allclose(learning_terms(config, info, free_decisions(observation, 0)), [scored[0], 0.0, scored[2]])
    policy = AirLlmPolicy(AirLlmConfig(hidden=16, denoiser_hidden=32, denoiser_blocks=1, sampling_steps=2, train_timesteps=4, learn=True))
    policy.ranks(observation)
    policy.feedback(float(np.mean(scored)), info)
    assert policy.rollout.reward[-1][1] == 0.0 and len(policy.buffer) == 2


# --- DDIM + classifier-free guidance -------------------------------------------------------------


def test_ddim_with_guidance_lands_nearer_the_condition_mode_than_unconditional_sampling():
    """Two conditions, two modes (+0.6 and -0.6 in every coordinate): conditional samples must find their mode."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    dim, modes = 3, torch.tensor([[0.6], [-0.6]])
    conditions = torch.eye(2)
    denoiser = Denoiser(dim, 2, hidden=64, blocks=2)
    scheduler = make_scheduler(50)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=2e-3)
    for _ in range(500):
        which = torch.randint(0, 2, (128,), generator=generator)
        x0 = modes[which].expand(-1, dim) + 0.05 * torch.randn(128, dim, generator=generator)
        loss = denoising_loss(denoiser, scheduler, x0, conditions[which], torch.ones(128), 0.1, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for k in range(2):
        cond = conditions[k].repeat(200, 1)
        guided = ddim_sample(denoiser, scheduler, cond, dim, steps=50, guidance=1.5, generator=torch.Generator().manual_seed(1))
        unconditional = ddim_sample(denoiser, scheduler, cond, dim, steps=50, guidance=0.0, generator=torch.Generator().manual_seed(1))
        guided_distance = (guided - modes[k]).abs().mean().item()
        unconditional_distance = (unconditional - modes[k]).abs().mean().item()
        assert guided_distance < 0.15
        assert guided_distance < 0.5 * unconditional_distance


# --- checkpoints ----------------------------------------------------------------------------------


def _train_a_little(policy, rounds=6):
    rng = np.random.default_rng(0)
    for round_ in range(1, rounds + 1):
        observation = make_observation(rng.uniform(-5, 15, 3), rng.uniform(1e5, 5e6, 3), round_=round_, total=rounds, deadline_s=0.1)
        policy.ranks(observation)
        policy.feedback(float(rng.normal()), {"done": round_ == rounds})


def test_airllm_checkpoint_round_trip_gives_the_same_ranks(tmp_path):
    learner = AirLlmPolicy(AirLlmConfig(**SMALL_AIRLLM, learn=True, warmup_transitions=0, n_steps=3, seed=5))
    _train_a_little(learner)
    assert learner.updates >= 2
    learner.save(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "policy.json").read_text())["policy"] == "airllm"
    frozen = AirLlmPolicy(AirLlmConfig(learn=False, seed=5))  # sizes come from the checkpoint
    frozen.load(tmp_path / "ckpt")
    twin = AirLlmPolicy(AirLlmConfig(learn=False, seed=5)).load(tmp_path / "ckpt")
    observation = make_observation([-5.0, 5.0, 15.0], [4e5, 2e6, 5e6], round_=3, deadline_s=0.1)
    assert np.array_equal(frozen.ranks(observation), twin.ranks(observation))
    for key, value in learner.tensors().items():
        assert torch.equal(value, frozen.tensors()[key])


def test_ppo_checkpoint_round_trip_gives_the_same_ranks(tmp_path):
    policy = PpoPolicy(PpoConfig(hidden=8, seed=2))
    observation = make_observation([-5.0, 15.0, 5.0], [4e5, 5e6, 1e6], deadline_s=0.1)
    initial = policy.ranks(observation)  # builds the network
    with torch.no_grad():  # move the weights off their initialisation, so that a load that kept them would be caught
        for p in policy.model.policy.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    moved = policy.ranks(observation)
    assert not np.array_equal(moved, initial)
    policy.save(tmp_path / "ppo")
    mode = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "ppo").iterdir()}
    assert mode["weights.safetensors"] == mode["policy.json"], mode  # as the umask gives any new file (safetensors: 0600)
    loaded = PpoPolicy(PpoConfig(seed=2)).load(tmp_path / "ppo")
    assert np.array_equal(loaded.ranks(observation), moved)
    for key, value in policy.tensors().items():
        assert torch.equal(value, loaded.tensors()[key])


def test_ppo_full_share_at_sends_all_that_fits_from_that_action_up_in_training_acting_and_its_checkpoint(tmp_path):
    observation = make_observation([-5.0, 15.0, 5.0], [4e5, 5e6, 1e6], deadline_s=0.1)
    greedy = ChannelGreedyPolicy(ChannelGreedyConfig()).ranks(observation)
    banded = PpoPolicy(PpoConfig(hidden=8, seed=2, full_share_at=-0.9))  # an untrained mean action near 0 is inside the band
    assert np.array_equal(banded.ranks(observation), greedy)
    assert not np.array_equal(PpoPolicy(PpoConfig(hidden=8, seed=2)).ranks(observation), greedy)
    banded.save(tmp_path / "ppo")
    loaded = PpoPolicy(PpoConfig(seed=2)).load(tmp_path / "ppo")  # the checkpoint's action map, not the default
    assert loaded.config.full_share_at == -0.9 and np.array_equal(loaded.ranks(observation), greedy)

    def rewards(action: float, full_share_at: float) -> np.ndarray:
        env = channel_slots(RewardConfig(), [2.0], seed=1000, full_share_at=full_share_at)
        env.reset()
        env.step_async(np.full((3, 1), action))
        return env.step_wait()[1]

    assert np.array_equal(rewards(0.0, -0.9), rewards(1.0, -0.9))  # both inside the band: the same ranks, the same draws
    assert not np.array_equal(rewards(0.0, 1.0), rewards(1.0, 1.0))


@pytest.mark.parametrize("name", ["ppo", "airllm"])
def test_a_checkpoint_restores_the_action_map_it_was_trained_with_and_refuses_another(tmp_path, name):
    """min_rank (and airllm's spread and sharpness) map the network's output to ranks: a checkpoint saved with
    min_rank 2 acts with min_rank 2 under a scenario that names only the checkpoint, and a scenario that sets
    another value is refused in one line rather than silently overridden."""
    make = {
        "ppo": lambda **kw: PpoPolicy(PpoConfig(hidden=8, seed=2, **kw)),
        "airllm": lambda **kw: AirLlmPolicy(AirLlmConfig(**{**SMALL_AIRLLM, **kw})),
    }[name]
    trained_with = {"min_rank": 2, **({"spread": 3, "sharpness": 1.0} if name == "airllm" else {})}
    policy = make(**trained_with)
    observation = make_observation([-5.0, 15.0, 5.0], [4e5, 5e6, 1e6], deadline_s=0.1)
    policy.ranks(observation)  # builds the networks
    policy.save(tmp_path / name)
    loaded = type(policy)(type(policy.config)()).load(tmp_path / name)
    assert {key: getattr(loaded.config, key) for key in trained_with} == trained_with
    assert loaded.ranks(observation).min() >= 2
    type(policy)(type(policy.config)(min_rank=2)).load(tmp_path / name)  # the same value, set explicitly: fine
    with pytest.raises(FedsimError, match=r"policy.min_rank=0 differs from 2, which checkpoint .* was trained with; allowed: 2"):
        type(policy)(type(policy.config)(min_rank=0)).load(tmp_path / name)


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("garble-weights", "unreadable safetensors file"),
        ("garble-json", "not valid JSON"),
        ("other-policy", "holds policy 'ppo', but the scenario asks for 'airllm'"),
        ("other-sizes", "this policy needs"),
        ("missing", "no policy.json there"),
    ],
)
def test_corrupt_or_mismatched_checkpoint_is_one_line_exit_2(tmp_path, capsys, damage, expected):
    ckpt = tmp_path / "ckpt"
    policy = AirLlmPolicy(AirLlmConfig(**SMALL_AIRLLM))
    policy.ranks(make_observation([0.0], [1e6], n_layers=4))
    policy.save(ckpt)
    if damage == "garble-weights":
        (ckpt / "weights.safetensors").write_bytes(b"\x00garbage" * 10)
    elif damage == "garble-json":
        (ckpt / "policy.json").write_text("{not json")
    elif damage == "other-policy":
        meta = json.loads((ckpt / "policy.json").read_text())
        (ckpt / "policy.json").write_text(json.dumps({**meta, "policy": "ppo"}))
    elif damage == "other-sizes":
        meta = json.loads((ckpt / "policy.json").read_text())
        meta["state"]["architecture"]["hidden"] = 24
        (ckpt / "policy.json").write_text(json.dumps(meta))
    else:
        ckpt = tmp_path / "nowhere"
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"rounds: 1\nengine: inline\nmodel: {{backbone: tiny-random}}\npolicy: {{name: airllm, checkpoint: {ckpt}}}\n")
    code = main(["run", str(scenario), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "run").exists(), "a rejected checkpoint must not leave an unfinished run directory"


# --- the gymnasium environment ----------------------------------------------------------------------


def env_scenario(dataset, policy):
    return tiny_scenario(
        rounds=3,
        data={"dataset": dataset, "eval_samples": 16, "eval_full_final": False, "partition": {"kind": "iid"}, "validation_samples": 16},
        clients={"num_clients": 4, "per_round": 2},
        train={"local_steps": 1, "batch_size": 8},
        channel={"snr_db": 5.0, "deadline_s": 0.05},
        policy=policy,
    )


def test_env_passes_gymnasium_check_env(small_dataset):
    from gymnasium.utils.env_checker import check_env

    from fedsim.rl.env import FederatedRoundEnv

    env = FederatedRoundEnv(env_scenario(small_dataset, {"name": "ppo"}))
    check_env(env, skip_render_check=True)
    env.reset(seed=11)
    total_rounds, done = 0, False
    fitted = []
    while not done:  # the whole budget (action 1) is the largest rank that meets the deadline, as channel-greedy sends
        expected = np.clip(fitting_rank(env.observation), 0, 8).mean()
        _, reward, done, truncated, info = env.step(np.ones(env.action_space.shape, dtype=np.float32))
        total_rounds += 1
        assert np.isfinite(reward) and not truncated and info["mean_rank"] == expected
        fitted.append(expected)
    assert total_rounds == 3 and 0 < min(fitted) and max(fitted) < 8  # the deadline binds: 8 would not fit


@pytest.mark.parametrize("name", ["airllm", "ppo"])
def test_train_policy_cli_writes_a_checkpoint_that_run_uses(tmp_path, capsys, small_dataset, name, monkeypatch):
    import yaml

    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path / "sb3-log"))  # where SB3's default logger would make a folder per learn()

    policy = {"name": name, **({**SMALL_AIRLLM, "n_steps": 2} if name == "airllm" else {"hidden": 8, "n_steps": 3, "batch_size": 3, "full_share_at": 0.5})}
    raw = env_scenario(small_dataset, policy).model_dump(mode="json")
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train-policy", str(path), "--episodes", "2", "--out", str(tmp_path / "ckpt"), "--no-progress"]) == 0
    rows = list(csv.DictReader((tmp_path / "ckpt" / "training.csv").open()))
    assert [int(r["episode"]) for r in rows] == [1, 2] and [int(r["seed"]) for r in rows] == [3, 4]
    assert not (tmp_path / "sb3-log").exists()
    raw["policy"] = {"name": name, "checkpoint": str(tmp_path / "ckpt")}
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert (tmp_path / "run" / "summary.json").is_file()
    rounds = list(csv.DictReader((tmp_path / "run" / "rounds.csv").open()))
    assert all(np.isfinite(float(r["reward"])) and 0 <= float(r["val_accuracy"]) <= 1 for r in rounds)
    # The run's config.yaml records the sizes and action map the checkpoint acted with, not the scenario's defaults.
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["policy"]
    trained = {k: v for k, v in policy.items() if k not in ("n_steps", "batch_size", "sampling_steps")}
    assert {k: recorded[k] for k in trained} == trained and recorded["checkpoint"] == str(tmp_path / "ckpt")
    capsys.readouterr()


def test_learning_needs_a_validation_split_so_the_reward_never_reads_the_test_split(tmp_path, capsys, small_dataset):
    import yaml

    raw = env_scenario(small_dataset, {"name": "ppo"}).model_dump(mode="json")
    raw["data"]["validation_samples"] = 0
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train-policy", str(path), "--episodes", "1", "--out", str(tmp_path / "ckpt"), "--no-progress"]) == 2
    assert "data.validation_samples > 0" in capsys.readouterr().err
    without = get_runtime(scenario_from_dict(raw, "test"))
    with_validation = get_runtime(env_scenario(small_dataset, {"name": "ppo"}))
    held = set(with_validation.validation.tolist())
    assert len(held) == 16 and not held & set(np.concatenate(with_validation.partitions).tolist())  # no client trains on it
    assert sum(map(len, with_validation.partitions)) + 16 == sum(map(len, without.partitions))


def test_train_policy_refuses_a_policy_that_does_not_learn(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("policy: {name: adalora}\n")
    assert main(["train-policy", str(path), "--episodes", "1", "--out", str(tmp_path / "c")]) == 2
    assert "cannot be trained; allowed: ppo, airllm" in capsys.readouterr().err


# --- learned behaviour ------------------------------------------------------------------------------


def instantaneous_snr_db(observation: Observation) -> np.ndarray:
    return observation.channel.snr_db + 10 * np.log10(np.maximum(observation.channel.fading_gain, 1e-12))


def test_airllm_pipeline_learns_the_channel_dependent_optimum(tmp_path):
    """Coarse action -> DDIM with CFG -> ranks, trained by its own PPO and AWR updates on the real channel
    and reward at SNR levels -8 ... 20 dB, then frozen and evaluated at -5, 5 and 15 dB, which it never saw."""
    from scipy.stats import spearmanr

    config = AirLlmConfig(
        hidden=32, denoiser_hidden=64, denoiser_blocks=1, sampling_steps=5, train_timesteps=20, learn=True, seed=1,
        lr=1e-3, ent_coef=0.0, init_log_std=-0.7, warmup_transitions=128, ddim_updates=10,
    )  # fmt: skip
    learner = AirLlmPolicy(config)
    for episode in range(160):
        env = ChannelRounds([-8, -2, 2, 8, 12, 20], seed=1000 + episode)
        learner.reset()
        for round_ in range(1, 7):
            observation = env.observation(round_)
            info = env.play(observation, learner.ranks(observation), config.reward)
            learner.feedback(round_reward(config.reward, info), info)
    learner.save(tmp_path / "ckpt")
    frozen = AirLlmPolicy(AirLlmConfig(seed=1)).load(tmp_path / "ckpt")
    chosen, best, snr, mean_by_level = [], [], [], {}
    for level in (-5.0, 5.0, 15.0):
        ranks_here = []
        for seed in range(8):
            env = ChannelRounds([level], seed=seed)
            for round_ in range(1, 7):
                observation = env.observation(round_)
                ranks = frozen.ranks(observation)
                chosen += list(ranks.mean(1))
                ranks_here += list(ranks.mean(1))
                best += list(env.oracle_ranks(observation, config.reward))
                snr += list(instantaneous_snr_db(observation))
                env.play(observation, ranks, config.reward)
        mean_by_level[level] = np.mean(ranks_here)
    assert spearmanr(snr, chosen).statistic >= 0.6
    assert mean_by_level[15.0] - mean_by_level[-5.0] >= 2.0, mean_by_level
    assert spearmanr(best, chosen).statistic >= 0.6  # it follows the optimum, not just the SNR
    assert np.mean(np.abs(np.array(chosen) - np.array(best))) < 2.0


def test_airllm_refined_ranks_follow_the_coarse_action_after_the_denoiser_has_trained():
    """The DDIM refinement only shares a client's budget over layers, so the mean rank responds to the coarse
    level with gain 1 up to integer rounding (at most 1 / (2 L) per client), however the denoiser trained."""
    policy = AirLlmPolicy(AirLlmConfig(hidden=16, denoiser_hidden=32, denoiser_blocks=1, sampling_steps=5, train_timesteps=20, learn=True, seed=2))
    policy._ensure_built(12)
    rng = np.random.default_rng(0)
    share = np.linspace(2, 0.5, 12) / np.linspace(2, 0.5, 12).sum()
    for _ in range(300):  # a buffer whose best patterns favour the first layers, whatever the level
        coarse = rng.uniform(-1, 1, (1, 1))
        x = np.clip(rng.normal(0, 0.5, 12), -1, 1)
        policy.buffer.append((np.concatenate([coarse[0], share]), x, float(x[:6].sum() - x[6:].sum())))
    policy._ddim_update()
    coarse = torch.linspace(-1, 1, 21)[:, None]
    with torch.no_grad():
        pattern = policy.refine(policy.condition(coarse, share), torch.Generator().manual_seed(0))
    ranks = policy.to_ranks(coarse, pattern, max_rank=8)
    target = (coarse[:, 0].numpy() + 1) / 2 * 8
    gain = np.polyfit(target, ranks.mean(1), 1)[0]
    assert 0.95 <= gain <= 1.05
    assert np.abs(ranks.mean(1) - target).max() <= 1 / 24 + 1e-9
    assert ranks[:, :6].sum() > ranks[:, 6:].sum()  # and the pattern it learned puts the rank where the advantage was


def test_adalora_clients_report_smoothed_sensitivity_and_the_cohort_engine_agrees(tiny):
    from fedsim.adapter_state import truncate
    from fedsim.cohort import cohort_train
    from fedsim.runtime import get_runtime
    from fedsim.training import local_train

    runtime = get_runtime(tiny(policy={"name": "adalora"}, train={"local_steps": 3}))
    n = runtime.n_layers
    payload = truncate(runtime.initial_state, [0] + [4] * (n - 1))
    _, alone = local_train(runtime, payload, 1, server_round=2)
    sensitivity = np.array(alone["sensitivity"])
    assert sensitivity.shape == (n,) and sensitivity[0] == 0 and (sensitivity[1:] > 0).all()  # rank 0: no gradient
    [(_, together)] = cohort_train(runtime, [payload], [1], server_round=2)
    np.testing.assert_allclose(together["sensitivity"], sensitivity, rtol=1e-3)
    server_side = get_runtime(tiny(policy={"name": "adalora", "importance": "singular-values"}, train={"local_steps": 3}))
    assert "sensitivity" not in local_train(server_side, payload, 1, server_round=2)[1]


def test_adalora_sensitivity_is_per_rank_component_and_a_layer_nobody_trained_keeps_its_last_value():
    """A layer's claim must not grow with the rank the policy gave it: two layers whose components score
    the same are equally important at ranks 2 and 6, and a proportional sharing keeps them equal."""
    from fedsim.round.merge import client_importance

    per_component = np.array([0.3, 0.3, 0.5])
    ranks = [np.array([2, 6, 0]), np.array([6, 2, 0])]
    reports = [per_component * r for r in ranks]  # what clients report: the sum over the components they trained
    previous = np.array([9.0, 9.0, 0.7])
    importance = client_importance(reports, [10.0, 30.0], ranks, previous)
    np.testing.assert_allclose(importance, [0.3, 0.3, 0.7])  # layer 2: no client trained it, so nothing measured it
    np.testing.assert_array_equal(client_importance([], [], [], previous), previous)
    assert share_budget(8, importance[:2], max_rank=8).tolist() == [4, 4]


def test_adalora_adds_no_sample_to_its_average_from_a_round_in_which_nothing_arrived():
    config = AdaLoraConfig(init_budget=16, target_budget=16, tinit=0, tfinal=0)
    policy = AdaLoraPolicy(config)

    def observe(round_, importance, measured_in):
        obs = make_observation([10.0], [1e6], n_layers=4, round_=round_, total=10, importance=importance)
        obs.importance_round = measured_in
        return obs

    policy.ranks(observe(1, [0.0] * 4, 0))
    policy.ranks(observe(2, [4.0, 3.0, 2.0, 1.0], 1))
    ema, uncertainty = policy.ema.copy(), policy.uncertainty.copy()
    policy.ranks(observe(3, [4.0, 3.0, 2.0, 1.0], 1))  # round 2 delivered nothing: the same measurement, not a new one
    np.testing.assert_array_equal(policy.ema, ema)
    np.testing.assert_array_equal(policy.uncertainty, uncertainty)
    policy.ranks(observe(4, [4.0, 3.0, 2.0, 1.0], 3))
    assert not np.array_equal(policy.ema, ema)


def test_the_rewards_layer_weights_are_the_global_adapters_whatever_the_policy_observes(tiny):
    """adalora observes its clients' sensitivity, which is 0 for a layer it stopped sending; the reward's
    layer shares are the global adapter's singular-value mass at the start of the round, for every policy."""
    from fedsim.aggregation import singular_mass
    from fedsim.client_app import app as client_app
    from fedsim.inline_grid import InlineGrid
    from fedsim.server_app import build_strategy, run_train_round, simulated_nodes

    scenario = tiny(rounds=3, policy={"name": "adalora", "init_budget": 8, "target_budget": 4, "tinit": 0, "tfinal": 0})
    strategy = build_strategy(scenario)
    grid = InlineGrid(client_app, scenario.clients.num_clients)
    nodes = simulated_nodes(grid, scenario.clients.num_clients)
    state = strategy.global_state
    for round_ in range(1, 4):
        at_start = [singular_mass(a, b, state.max_rank) for a, b in zip(state.A, state.B)]
        run_train_round(grid, strategy, round_, nodes, None)
        np.testing.assert_allclose(strategy.round_info["layer_importance"], at_start, rtol=1e-6)
        state = strategy.global_state
        np.testing.assert_allclose(strategy.singular_mass, [singular_mass(a, b, state.max_rank) for a, b in zip(state.A, state.B)], rtol=1e-6)  # every layer
        strategy.evaluate(round_)
    assert strategy.importance_round == 3
    assert not np.allclose(strategy.layer_importance / strategy.layer_importance.sum(), strategy.singular_mass / strategy.singular_mass.sum())


def test_the_energy_cost_scales_only_the_radios_energy_to_a_full_rank_upload():
    """E_full = (E - E_compute) · bits_full / bits + E_compute, averaged over the uploads not cut off at the deadline."""
    from policies.common import client_terms

    info = {
        "bits_up": [50.0, 100.0, 40.0],
        "bits_full": [100.0] * 3,
        "rate_bps": [10.0] * 3,
        "deadline_s": 100.0,
        "energy_j": [3.0, 5.0, 1.0],
        "compute_energy_j": [1.0, 1.0, 0.5],
        "drop_reasons": ["", "", "deadline"],
    }
    terms = client_terms(RewardConfig(cost="energy", lam=1.0, utility=0.0), info)
    np.testing.assert_allclose(terms[:2], [-0.6, -1.0])  # E_full = 2·2 + 1 = 5 and 4·1 + 1 = 5


def test_the_policy_seam_refuses_ranks_that_are_not_whole_numbers_in_range():
    from fedsim.round.observe import checked_ranks

    np.testing.assert_array_equal(checked_ranks(np.array([[2.0, 8.0]]), (1, 2), 8, "p"), [[2, 8]])
    for bad, what in [([[np.nan, 2]], "not whole"), ([[2.7, 2]], "not whole"), ([[-1, 2]], r"\[-1, 2\]"), ([[9, 2]], r"\[2, 9\]"), ([[2, 2, 2]], r"\(1, 3\)")]:
        with pytest.raises(FedsimError, match=what):
            checked_ranks(np.array(bad), (1, 2), 8, "p")


@pytest.mark.parametrize("validation", [0, 40])
def test_a_policy_never_observes_the_test_split(tiny, validation):
    """Without a validation split the loss and accuracy a policy observes are NaN (its features read 0),
    not the test metrics the run reports; with one, they are the validation split's."""
    from fedsim.client_app import app as client_app
    from fedsim.inline_grid import InlineGrid
    from fedsim.server_app import build_strategy, run_train_round, simulated_nodes

    scenario = tiny(data={**TINY["data"], "validation_samples": validation})
    strategy = build_strategy(scenario)
    grid = InlineGrid(client_app, scenario.clients.num_clients)
    run_train_round(grid, strategy, 1, simulated_nodes(grid, scenario.clients.num_clients), None)
    test_loss, test_accuracy, _ = strategy.evaluate(1)
    seen = strategy.prepare_round(2)
    if validation:
        assert (seen.last_loss, seen.last_accuracy) == (strategy.validation_metrics["val_loss"], strategy.validation_metrics["val_accuracy"])
        assert seen.last_loss != test_loss
    else:
        assert np.isnan(seen.last_loss) and np.isnan(seen.last_accuracy)


@pytest.mark.parametrize("cost", ["bytes", "latency", "energy"])
def test_client_rewards_average_to_the_round_reward_and_charge_each_client_its_own_cost(cost):
    from policies.common import client_rewards

    info = {
        "loss": 2.0,
        "accuracy": 0.5,
        "bits_up": [80.0, 20.0, 50.0],
        "bits_full": [100.0] * 3,
        "rate_bps": [10.0, 40.0, 5.0],
        "energy_j": [3.0, 0.2, 4.0],
        "deadline_s": 10.0,
        "drop_reasons": ["", "", "deadline"],
    }
    config = RewardConfig(cost=cost, lam=0.5, deadline_penalty=1.0)
    per_client = client_rewards(config, info)
    assert per_client.mean() == pytest.approx(round_reward(config, info))
    assert per_client[0] < per_client[1]  # the bigger, slower, costlier upload scores lower
    assert per_client[2] < per_client[0]  # the late client pays the penalty


# --- the shipped checkpoints ---------------------------------------------------------------------

SHIPPED = Path(__file__).resolve().parent.parent / "policies" / "checkpoints"


@pytest.mark.parametrize("name", ["airllm", "ppo"])
def test_shipped_checkpoint_loads_and_its_mean_rank_rises_with_snr(name):
    """What policy_compare.yaml loads: MiniLM's layout (12 adapted layers of 768 parameters per rank, a
    29,645-parameter head, 8 bits), 3 clients on 1 MHz with a 3 s deadline, no fading; SNR -10 ... 25 dB."""
    policy_class, config_class = {"airllm": (AirLlmPolicy, AirLlmConfig), "ppo": (PpoPolicy, PpoConfig)}[name]
    policy = policy_class(config_class()).load(SHIPPED / name)
    assert policy.training.get("command", "").startswith("fedsim train-policy")
    lo, hi = policy.training["seeds"]
    assert hi < 0 or lo > 5, "trained on seeds that the comparison (0-5) evaluates on"
    levels = [-10.0, -5.0, 0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    mean_rank = []
    for snr in levels:
        rate = np.full(3, 1e6 / 3 * np.log2(1 + 10 ** (snr / 10)))
        observation = make_observation([snr] * 3, rate, n_layers=12, round_=5, total=10, deadline_s=3.0, ppr=768, fixed=29_645)
        observation.bits_per_param = 8
        mean_rank.append(float(np.mean([policy.ranks(observation).mean() for _ in range(3)])))
    assert all(b >= a - 0.25 for a, b in zip(mean_rank, mean_rank[1:])), dict(zip(levels, mean_rank))
    assert mean_rank[levels.index(15.0)] - mean_rank[levels.index(-5.0)] >= 2.0, dict(zip(levels, mean_rank))


@pytest.mark.parametrize(
    "settings",
    [{"aggregation": {"method": "fisher"}}, {"algorithm": {"name": "scaffold"}, "aggregation": {"method": "fedavg-factors"}}],
    ids=["fisher", "scaffold"],
)
def test_the_upload_a_policy_budgets_for_is_the_upload_sent(tmp_path, settings):
    """At full rank and 8 bits, the cost the policies see (parameters x 8 + a 32-bit scale per tensor) equals the
    bytes the ledger meters, with Fisher estimates or SCAFFOLD's control-variate copy in the upload."""
    from fedsim.runner import run_scenario
    from fedsim.server_app import build_strategy
    from policies.common import full_rank_bits

    scenario = tiny_scenario(quantization={"bits_per_param": 8}, policy={"name": "fixed", "rank": 8}, rounds=1, **settings)
    observation = build_strategy(scenario).prepare_round(1)
    run_scenario(scenario, tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "clients.csv", newline="") as fh:
        sent = {int(c["bytes_up"]) * 8 for c in csv.DictReader(fh)}
    assert sent == {full_rank_bits(observation) + 32 * observation.upload_tensors}


def test_what_fits_counts_the_half_byte_a_4_bit_tensor_of_odd_size_rounds_up_to():
    """One layer, A (r x 3) and B (2 x r), a 3 x 3 head and a 3-entry bias at 4 bits, 200 bits of airtime: rank 1 sends
    (5 + 12) x 4 + 4 x 32 scale bits = 196 by the count of parameters, but the odd-sized tensors pack into whole bytes
    (208 bits), so it would be late; rank 0 (184 bits) is what fits."""
    from channels.quantization import expected_bytes
    from channels.wireless import ChannelConfig, WirelessChannel

    channel = WirelessChannel(ChannelConfig(snr_db=10, bandwidth_hz=1e3, deadline_s=1.0), seed=0)
    states = channel.draw(1, np.array([0]), np.random.default_rng(0))
    channel.deadline_s = 200 / float(states.rate_bps[0])
    observation = Observation(
        round=1, total_rounds=1, channel=states, layer_names=["l0"], max_rank=4, params_per_rank=np.array([5]), fixed_params=12,
        bits_per_param=4, last_ranks=np.full((1, 1), 4), last_loss=np.nan, last_accuracy=np.nan, layer_importance=np.zeros(1),
        deadline_s=channel.deadline_s, upload_tensors=4,
    )  # fmt: skip

    def sent(rank: int) -> str:
        bits = expected_bytes({"A.0": (rank, 3), "B.0": (2, rank), "head.weight": (3, 3), "head.bias": (3,)}, 4) * 8
        return channel.uplink(states, np.array([bits]), np.random.default_rng(0))[0].drop_reason

    assert ChannelGreedyPolicy(ChannelGreedyConfig()).ranks(observation)[0, 0] == 0
    assert (sent(0), sent(1)) == ("", "deadline")


def test_an_uneven_pattern_over_layers_of_different_sizes_stays_within_what_fits():
    """airllm's per-layer pattern (here with spread 3) may give the large layer more than the uniform fitting rank; its
    upload must still cost no more than that rank's: Σ_l r_l p_l <= r_fit Σ_l p_l."""
    from policies.common import within_reach

    policy = AirLlmPolicy(AirLlmConfig(**SMALL_AIRLLM, spread=3, sharpness=3.0, seed=0))
    rng = np.random.default_rng(4)
    over_before = 0
    for _ in range(40):
        observation = make_observation(rng.uniform(0, 20, 3), rng.uniform(1e5, 2e6, 3), n_layers=2, deadline_s=0.5, ppr=100, fixed=0)
        observation.params_per_rank = np.array([100, 2000])
        fit = np.clip(fitting_rank(observation), 1, 8)
        ranks = policy.ranks(observation)
        assert np.all(ranks @ observation.params_per_rank <= fit * 2100 + 1e-9), (ranks, fit)
        coarse, pattern = torch.ones(3, 2), torch.tensor([[-1.0, 1.0]] * 3)  # all that fits, in the pattern that favours the large layer
        uneven = policy.to_ranks(coarse, pattern, 8, top=fitting_rank(observation))
        over_before += int(np.sum(uneven @ observation.params_per_rank > fit * 2100))
        assert np.all(within_reach(uneven, observation.params_per_rank, fit, 1) @ observation.params_per_rank <= fit * 2100)
    assert over_before > 0  # without the bound, such patterns do cost more than what fits
