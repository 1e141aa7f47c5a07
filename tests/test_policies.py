"""Rank policies: bounds for any observation, DDIM + classifier-free guidance, checkpoints, the gymnasium env,
and airllm's learned channel awareness."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.cli import main
from fedsim.config import scenario_from_dict
from fedsim.runtime import get_runtime
from fedsim.types import ChannelStates, FedsimError, Observation
from policies.adalora import AdaLoraConfig, AdaLoraPolicy, cubic_budget, share_budget
from policies.airllm import AirLlmConfig, AirLlmPolicy, Denoiser, ddim_sample, denoising_loss, make_scheduler
from policies.channel_greedy import ChannelGreedyConfig, ChannelGreedyPolicy
from policies.common import RewardConfig, round_reward
from policies.fixed import FixedConfig, FixedPolicy
from policies.ppo import PpoConfig, PpoPolicy

from conftest import tiny_scenario

@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny networks: one thread avoids spin-waiting on a busy machine (minutes instead of seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL_AIRLLM = {"coarse_dim": 4, "hidden": 16, "denoiser_hidden": 32, "denoiser_blocks": 1, "sampling_steps": 3, "train_timesteps": 20}


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
    "airllm-learning": lambda: AirLlmPolicy(AirLlmConfig(**SMALL_AIRLLM, learn=True, warmup_transitions=0, rollout_rounds=2)),
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


def test_reward_subtracts_normalised_cost_and_deadline_penalty():
    info = {"loss": 2.0, "accuracy": 0.5, "bits_up": [50.0, 0.0], "bits_full": [100.0, 100.0], "rate_bps": [10.0, 10.0],
            "energy_j": [1.0, 0.0], "deadline_s": 10.0, "drop_reasons": ["", "deadline"]}
    assert round_reward(RewardConfig(cost="bytes", lam=0.1), info) == pytest.approx(-2.0 - 0.1 * 0.25 - 0.5)
    assert round_reward(RewardConfig(cost="latency", lam=0.1), info) == pytest.approx(-2.0 - 0.1 * (50 / 100 + 0) / 2 - 0.5)
    assert round_reward(RewardConfig(cost="energy", lam=1.0, deadline_penalty=0), info) == pytest.approx(-2.0 - 0.5)


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
    learner = AirLlmPolicy(AirLlmConfig(**SMALL_AIRLLM, learn=True, warmup_transitions=0, rollout_rounds=3, seed=5))
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
    observation = make_observation([-5.0, 15.0], [4e5, 5e6], deadline_s=0.1)
    with torch.no_grad():  # move the weights off their initialisation so that the check means something
        for p in policy.tensors().values() if policy.model else []:
            p.add_(0.1)
    first = policy.ranks(observation)
    with torch.no_grad():
        for p in policy.model.policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    first = policy.ranks(observation)
    policy.save(tmp_path / "ppo")
    loaded = PpoPolicy(PpoConfig(seed=2)).load(tmp_path / "ppo")
    assert np.array_equal(loaded.ranks(observation), first)


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


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """A four-class slice of BANKING77, so that every env episode (new seed = new runtime) tokenises in milliseconds."""
    from fedsim.data import EMBEDDED

    root = tmp_path_factory.mktemp("data")
    with (EMBEDDED["banking77"] / "train.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    classes = sorted({r["category"] for r in rows})[:4]
    for name, per_class, offset in (("train.csv", 24, 0), ("test.csv", 8, 24)):
        chosen = [r for c in classes for r in [x for x in rows if x["category"] == c][offset : offset + per_class]]
        with (root / name).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["text", "category"])
            writer.writeheader()
            writer.writerows(chosen)
    return str(root)


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

    from policies.env import FederatedRoundEnv

    env = FederatedRoundEnv(env_scenario(small_dataset, {"name": "ppo"}))
    check_env(env, skip_render_check=True)
    env.reset(seed=11)
    total_rounds, done = 0, False
    while not done:
        _, reward, done, truncated, info = env.step(np.ones(env.action_space.shape, dtype=np.float32))
        total_rounds += 1
        assert np.isfinite(reward) and not truncated and info["mean_rank"] == 8
    assert total_rounds == 3


@pytest.mark.parametrize("name", ["airllm", "ppo"])
def test_train_policy_cli_writes_a_checkpoint_that_run_uses(tmp_path, capsys, small_dataset, name):
    import yaml

    policy = {"name": name, **({**SMALL_AIRLLM, "rollout_rounds": 2} if name == "airllm" else {"hidden": 8, "n_steps": 3, "batch_size": 3})}
    raw = env_scenario(small_dataset, policy).model_dump(mode="json")
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train-policy", str(path), "--episodes", "2", "--out", str(tmp_path / "ckpt"), "--no-progress"]) == 0
    rows = list(csv.DictReader((tmp_path / "ckpt" / "training.csv").open()))
    assert [int(r["episode"]) for r in rows] == [1, 2] and [int(r["seed"]) for r in rows] == [3, 4]
    raw["policy"] = {"name": name, "checkpoint": str(tmp_path / "ckpt")}
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert (tmp_path / "run" / "summary.json").is_file()
    rounds = list(csv.DictReader((tmp_path / "run" / "rounds.csv").open()))
    assert all(np.isfinite(float(r["reward"])) and 0 <= float(r["val_accuracy"]) <= 1 for r in rounds)
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


def channel_reward(observation: Observation, ranks: np.ndarray, reward: RewardConfig) -> float:
    """A deterministic stand-in for a federated round with one client: quality grows with the mean rank
    (loss = 1 - log(1 + r̄) / log(1 + R)); the upload is metered against rate x deadline by the real
    `round_reward`, deadline misses included."""
    bits = float((observation.params_per_rank @ ranks[0] + observation.fixed_params) * observation.bits_per_param)
    full = float((observation.params_per_rank.sum() * observation.max_rank + observation.fixed_params) * observation.bits_per_param)
    late = bits > observation.channel.rate_bps[0] * observation.deadline_s
    info = {
        "loss": 1.0 - np.log1p(ranks.mean()) / np.log1p(observation.max_rank),
        "bits_up": [bits], "bits_full": [full], "rate_bps": observation.channel.rate_bps, "energy_j": [0.0],
        "deadline_s": observation.deadline_s, "drop_reasons": ["deadline" if late else ""],
    }
    return round_reward(reward, info)


def snr_observation(snr_db: float, round_: int, client: int, total: int = 10) -> Observation:
    rate = 1e6 * np.log2(1 + 10 ** (snr_db / 10))  # 1 MHz AWGN: 0.40 Mbit/s at -5 dB, 5.03 Mbit/s at 15 dB
    observation = make_observation([snr_db], [rate], round_=round_, total=total, deadline_s=0.1)
    observation.channel.client_ids[:] = client
    return observation


def test_trained_airllm_gives_higher_ranks_at_15_db_than_at_minus_5_db(tmp_path):
    """At 0.1 s, -5 dB fits rank 2 (the whole upload at rank 3 misses the deadline); 15 dB fits rank 8."""
    config = AirLlmConfig(
        coarse_dim=4, hidden=32, denoiser_hidden=64, sampling_steps=5, learn=True, seed=1, lr=1e-3, rollout_rounds=32, warmup_transitions=256, ddim_updates=10
    )
    learner = AirLlmPolicy(config)
    rng = np.random.default_rng(0)
    for _episode in range(90):
        learner.reset()
        for round_ in range(1, 11):
            observation = snr_observation(float(rng.choice([-5.0, 15.0])), round_, int(rng.integers(100)))
            ranks = learner.ranks(observation)
            learner.feedback(channel_reward(observation, ranks, config.reward), {"done": round_ == 10})
    learner.save(tmp_path / "ckpt")
    frozen = AirLlmPolicy(AirLlmConfig(learn=False, seed=1)).load(tmp_path / "ckpt")
    mean_rank = {snr: np.mean([frozen.ranks(snr_observation(snr, r, c)).mean() for r in range(1, 11) for c in range(3)]) for snr in (-5.0, 15.0)}
    assert mean_rank[15.0] > mean_rank[-5.0] + 1.0, mean_rank


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


@pytest.mark.parametrize("cost", ["bytes", "latency", "energy"])
def test_client_rewards_average_to_the_round_reward_and_charge_each_client_its_own_cost(cost):
    from policies.common import client_rewards

    info = {"loss": 2.0, "accuracy": 0.5, "bits_up": [80.0, 20.0, 50.0], "bits_full": [100.0] * 3, "rate_bps": [10.0, 40.0, 5.0],
            "energy_j": [3.0, 0.2, 4.0], "deadline_s": 10.0, "drop_reasons": ["", "", "deadline"]}
    config = RewardConfig(cost=cost, lam=0.5, deadline_penalty=1.0)
    per_client = client_rewards(config, info)
    assert per_client.mean() == pytest.approx(round_reward(config, info))
    assert per_client[0] < per_client[1]  # the bigger, slower, costlier upload scores lower
    assert per_client[2] < per_client[0]  # the late client pays the penalty
