"""The Python API (fedsim.run / load_run / sweep) and a rank policy registered from user code, as a
researcher would write it in a notebook or in their own package, without editing fedsim."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

import fedsim
from channels.base import Channel
from fedsim.algorithms.base import FederatedAlgorithm
from fedsim.plugins import REGISTERED_HERE
from fedsim.types import ChannelStates, Transmission
from policies.base import RankPolicy

TINY = {
    "engine": "inline", "rounds": 2, "model.backbone": "tiny-random", "data.eval_samples": 32, "data.eval_full_final": False,
    "clients.num_clients": 6, "clients.per_round": 3, "train.local_steps": 1,
}  # fmt: skip


class TopHalfConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["top-half"] = "top-half"
    rank: int = 2


@fedsim.register_policy(TopHalfConfig)
class TopHalfPolicy(RankPolicy):
    """Rank `rank` on the upper half of the adapted layers, 0 below."""

    name = "top-half"

    def ranks(self, observation):
        ranks = np.zeros((observation.n_clients, observation.n_layers), dtype=np.int64)
        ranks[:, observation.n_layers // 2 :] = self.config.rank
        return ranks


def test_run_returns_the_ledgers_as_dataframes(tmp_path):
    result = fedsim.run("scenarios/quickstart.yaml", TINY, out=tmp_path / "run")
    assert result.path == tmp_path / "run" and result.scenario.rounds == 2
    assert list(result.rounds["round"]) == [1, 2] and len(result.clients) == 2 * 3
    assert result.rounds["cum_bytes_up"].iloc[-1] == result.summary["total_bytes_up"]
    again = fedsim.load_run(result.path)
    assert again.rounds.equals(result.rounds) and again.summary == result.summary
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(fedsim.FedsimError, match="not a finished run"):
        fedsim.load_run(tmp_path / "unfinished")
    with pytest.raises(fedsim.FedsimError, match="rounds"):
        fedsim.run("scenarios/quickstart.yaml", {**TINY, "rounds": 0}, out=tmp_path / "bad")


def test_a_policy_registered_from_user_code_runs_by_name(tmp_path):
    result = fedsim.run("scenarios/quickstart.yaml", {**TINY, "policy": {"name": "top-half", "rank": 3}}, out=tmp_path / "run")
    n_layers = len(result.summary["layers"])
    expected = " ".join(["0"] * (n_layers // 2) + ["3"] * (n_layers - n_layers // 2))
    assert set(result.clients["ranks"]) == {expected}
    assert result.scenario.policy.rank == 3
    with pytest.raises(fedsim.FedsimError, match="policy.rank"):
        fedsim.run("scenarios/quickstart.yaml", {**TINY, "policy": {"name": "top-half", "rank": "many"}}, out=tmp_path / "bad")


def test_a_backbone_entry_point_for_a_built_in_model_type_is_skipped_and_the_built_in_family_kept(tmp_path, monkeypatch, capsys):
    """An installed package must not change a built-in family in every process that imports fedsim: its entry for `bert`
    is skipped with one line on stderr and bert keeps its family (`fedsim.register_backbone` in code may override)."""
    import importlib.metadata

    from fedsim.backbones import registry

    (tmp_path / "clash_plugin.py").write_text("from fedsim.backbones.encoder import EncoderBackbone\nFAMILY = EncoderBackbone(('query', 'value'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint(name="bert", value="clash_plugin:FAMILY", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [entry] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    built_in = registry.FAMILIES["bert"]
    assert registry.load_backbone_entry_points() == []
    assert registry.FAMILIES["bert"] is built_in
    assert capsys.readouterr().err.splitlines() == [
        "fedsim: skipped backbone plugin bert = clash_plugin:FAMILY (from ?): model_type 'bert' already has a backbone family"
    ]


def test_plugins_from_an_installed_distributions_entry_points_are_known_to_every_process(tmp_path):
    """The entry point groups (`fedsim.algorithms` and `fedsim.tasks` load as `fedsim.policies` and `fedsim.channels` do):
    a fresh process (as a sweep worker, a Ray actor or the CLI is) knows the policy and runs the channel, aggregator
    and adapter kind; a broken entry costs one line."""
    (tmp_path / "myplugin.py").write_text(
        textwrap.dedent(
            """
            from typing import Literal
            import numpy as np
            from pydantic import BaseModel
            from policies.base import RankPolicy

            class OneConfig(BaseModel):
                name: Literal["all-ones"] = "all-ones"

            class OnePolicy(RankPolicy):
                name = "all-ones"
                def ranks(self, observation):
                    return np.ones((observation.n_clients, observation.n_layers), dtype=np.int64)

            POLICY = (OneConfig, OnePolicy)

            from channels.base import Channel
            from fedsim.adapters import AdapterKind
            from fedsim.aggregators import Aggregator
            from fedsim.types import ChannelStates, Transmission

            class FixedRateConfig(BaseModel):
                model: Literal["fixed-rate"] = "fixed-rate"

            class FixedRate(Channel):
                def __init__(self, config, seed):
                    self.config = config
                def draw(self, round, client_ids, rng):
                    ones = np.ones(len(client_ids))
                    return ChannelStates(np.asarray(client_ids), 0 * ones, ones, 1e6 * ones, 1e6 * ones)
                def uplink(self, states, n_bits, rng, samples=None):
                    return [Transmission(int(b), b / 1e6, 0.0, True) for b in n_bits]
                def downlink(self, states, n_bits):
                    return [Transmission(int(b), b / 1e6, 0.0, True) for b in n_bits]

            CHANNEL = (FixedRateConfig, FixedRate)

            def keep_global(glob_a, glob_b, *rest):
                from fedsim.aggregation import LayerMerge
                return LayerMerge(glob_a.copy(), glob_b.copy(), 1.0)

            AGGREGATOR = Aggregator(keep_global)
            LORA_COPY = AdapterKind("fedsim.model:build_lora", "fedsim.training:train_lora")
            BERT = "not a Backbone"
            """
        )
    )
    dist = tmp_path / "myplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
    # A second distribution's plugin is broken: it costs one line, not every command.
    (dist / "entry_points.txt").write_text(
        "[fedsim.policies]\nall-ones = myplugin:POLICY\nbroken = nosuchmodule:POLICY\n[fedsim.channels]\nfixed-rate = myplugin:CHANNEL\n"
        "[fedsim.aggregators]\nkeep-global = myplugin:AGGREGATOR\n[fedsim.adapters]\nlora-copy = myplugin:LORA_COPY\n[fedsim.backbones]\nbert = myplugin:BERT\n"
    )
    scenario = tmp_path / "s.yaml"
    scenario.write_text("model: {backbone: tiny-random}\npolicy: {name: all-ones}\n")
    env = {"PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[1]}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "fedsim.cli", "validate", str(scenario)], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "name: all-ones" in done.stdout
    assert [line for line in done.stderr.splitlines() if "broken" in line] == [
        "fedsim: skipped policy plugin broken = nosuchmodule:POLICY (from myplugin): No module named 'nosuchmodule'"
    ]
    assert "Traceback" not in done.stderr
    parts = {"channel": "{model: fixed-rate}", "aggregation.method": "keep-global", "adapter.kind": "lora-copy", "train.engine": "per-client"}
    argv = ["run", "scenarios/quickstart.yaml", *(f"--set={k}={v}" for k, v in {**TINY, "rounds": 1, **parts}.items())]
    ran = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", *argv, "--no-progress", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, cwd=str(Path(__file__).resolve().parents[1]),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-1000:]
    assert "fedsim: skipped backbone plugin bert = myplugin:BERT (from myplugin): not a fedsim.backbones.base.Backbone but str" in ran.stderr
    import pandas as pd
    from safetensors.numpy import load_file

    clients = pd.read_csv(tmp_path / "run" / "clients.csv")
    np.testing.assert_allclose(clients["latency_s"], clients["bytes_up"] * 8 / 1e6)  # the plugin's 1 Mb/s channel
    factors = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert clients["delivered"].all() and all(not v.any() for k, v in factors.items() if "lora_B" in k)  # keep-global kept B = 0


def test_sweep_returns_the_collected_results(tmp_path):
    sweep_file = tmp_path / "sweep.yaml"
    sets = "\n".join(
        f"  {key}: {value if not isinstance(value, bool) else str(value).lower()}" for key, value in {**TINY, "rounds": 1}.items() if key != "engine"
    )
    sweep_file.write_text(f"base: {(tmp_path.cwd() / 'scenarios' / 'quickstart.yaml').resolve()}\nset:\n{sets}\ngrid:\n  policy.rank: [1, 2]\nseeds: [0]\n")
    result = fedsim.sweep(sweep_file, tmp_path / "out")
    assert result.counts["done"] == 2 and result.counts["failed"] == 0
    assert sorted(result.results["policy.rank"]) == [1, 2]


class HalfStepConfig(BaseModel):
    name: Literal["half-step"] = "half-step"


@fedsim.register_algorithm(HalfStepConfig)
class HalfStep(FederatedAlgorithm):
    """A server that takes half of FedAvg's step, in factor space: x + (x_agg - x) / 2."""

    name = "half-step"

    def server_update(self, global_state, aggregated, uploads, weights):
        state = aggregated.state.copy()
        state.A = [(g + (a - g) / 2).astype(np.float32) for g, a in zip(global_state.A, aggregated.state.A)]
        state.B = [(g + (b - g) / 2).astype(np.float32) for g, b in zip(global_state.B, aggregated.state.B)]
        return aggregated._replace(state=state)


def test_an_algorithm_registered_from_user_code_runs_by_name(tmp_path):
    """The algorithm seam: one class and one registration in this file, named in a scenario."""
    base = {**TINY, "aggregation.method": "fedavg-factors", "rounds": 1}
    fedavg = fedsim.run("scenarios/quickstart.yaml", base, out=tmp_path / "fedavg")
    half = fedsim.run("scenarios/quickstart.yaml", {**base, "algorithm": {"name": "half-step"}}, out=tmp_path / "half")
    assert half.scenario.algorithm.name == "half-step"
    from safetensors.numpy import load_file

    initial = {k: v for k, v in load_file(str(tmp_path / "fedavg" / "adapter" / "adapter_model.safetensors")).items() if "lora_B" in k}
    halved = {k: v for k, v in load_file(str(tmp_path / "half" / "adapter" / "adapter_model.safetensors")).items() if "lora_B" in k}
    for key in initial:  # B starts at 0, so after one round B_half = B_fedavg / 2 exactly
        np.testing.assert_allclose(halved[key], initial[key] / 2, rtol=1e-6, atol=1e-9)
    assert (half.clients["bytes_up"] == fedavg.clients["bytes_up"]).all()


class ErasureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Literal["erasure"] = "erasure"
    loss: float = 0.0
    rate_bps: float = 1e6


@fedsim.register_channel(ErasureConfig)
class ErasureChannel(Channel):
    """A toy uplink: a fixed rate, and each upload erased with probability `loss`."""

    def __init__(self, config: ErasureConfig, seed: int):
        self.config = config

    def draw(self, round, client_ids, rng):
        n = len(client_ids)
        ones = np.ones(n)
        return ChannelStates(np.asarray(client_ids), 0 * ones, ones, 1e6 * ones, self.config.rate_bps * ones)

    def uplink(self, states, n_bits, rng, samples=None):
        erased = rng.random(len(n_bits)) < self.config.loss
        return [Transmission(int(b), b / self.config.rate_bps, 0.0, not e, "erased" if e else "") for b, e in zip(n_bits, erased)]

    def downlink(self, states, n_bits):
        return [Transmission(int(b), b / self.config.rate_bps, 0.0, True) for b in n_bits]


def test_a_channel_registered_from_user_code_meters_the_uploads(tmp_path):
    """The channel seam: a config, a `Channel` subclass and one registration in this file, named by `model`."""
    clean = fedsim.run("scenarios/quickstart.yaml", {**TINY, "channel": {"model": "erasure"}}, out=tmp_path / "clean")
    assert clean.scenario.channel.model == "erasure"
    assert (clean.clients["drop_reason"].fillna("") == "").all()
    np.testing.assert_allclose(clean.clients["latency_s"], clean.clients["bytes_up"] * 8 / 1e6)
    lost = fedsim.run("scenarios/quickstart.yaml", {**TINY, "channel": {"model": "erasure", "loss": 1.0}}, out=tmp_path / "lost")
    assert (lost.clients["drop_reason"] == "erased").all() and (lost.rounds["updates_aggregated"] == 0).all()
    assert lost.rounds["accuracy"].nunique() == 1  # nothing was aggregated: the global adapter never moved
    with pytest.raises(fedsim.FedsimError, match="channel"):
        fedsim.run("scenarios/quickstart.yaml", {**TINY, "channel": {"model": "erasure", "snr_db": 5}}, out=tmp_path / "bad")


def test_a_part_registered_in_this_process_is_refused_where_other_processes_would_run_it(tmp_path):
    """Ray's actors and sweep workers do not run this file's registrations: Flower's engine failed in round 1, and a
    sweep's workers recorded pydantic dumps (a backbone family was even dropped silently, changing the numbers)."""
    message = r"channel.model=erasure: registered from this process's own code \(fedsim.register_\*\), which {} .*does not run"
    with pytest.raises(fedsim.FedsimError, match=message.format("engine=flower")):
        fedsim.run("scenarios/quickstart.yaml", {**TINY, "engine": "flower", "channel": {"model": "erasure"}}, out=tmp_path / "flower")
    assert not (tmp_path / "flower").exists()
    sweep_file = tmp_path / "sweep.yaml"
    sets = "\n".join(f"  {key}: {str(value).lower() if isinstance(value, bool) else value}" for key, value in TINY.items())
    base = (Path.cwd() / "scenarios" / "quickstart.yaml").resolve()
    sweep_file.write_text(f"base: {base}\nset:\n{sets}\n  channel: {{model: erasure}}\ngrid:\n  policy.rank: [1, 2]\nseeds: [0]\n")
    with pytest.raises(fedsim.FedsimError, match=message.format("--workers 2")):
        fedsim.sweep(sweep_file, tmp_path / "sweep", workers=2)
    assert not (tmp_path / "sweep").exists()


def keep_global_factors(glob_a, glob_b, trained, weights, deltas, max_rank, rng, statistics):
    """A toy aggregator: the global factors stay as they are (only the head, always a weighted mean, moves)."""
    from fedsim.aggregation import LayerMerge

    return LayerMerge(glob_a.copy(), glob_b.copy(), 1.0)


def factor_mean_with_fisher(glob_a, glob_b, trained, weights, deltas, max_rank, rng, statistics):
    """A toy aggregator that asks the clients for their Fisher estimate, and checks it arrived shaped like their factors."""
    from fedsim.aggregation import merge_factors

    assert [f[0].shape for f in statistics["fisher"]] == [a.shape for a, _ in trained]
    return merge_factors(glob_a, glob_b, trained, weights, deltas, max_rank, rng)


fedsim.register_aggregator("keep-global", keep_global_factors)
fedsim.register_aggregator("mean-with-fisher", factor_mean_with_fisher, client_statistics=("fisher",))


def test_an_aggregator_registered_from_user_code_runs_by_name(tmp_path):
    """The aggregator seam: a merge function and one registration in this file, named in a scenario; a declared
    client statistic is computed by the clients, sent, metered and handed to the merge."""
    from safetensors.numpy import load_file

    base = {**TINY, "rounds": 1, "train.engine": "per-client"}
    kept = fedsim.run("scenarios/quickstart.yaml", {**base, "aggregation.method": "keep-global"}, out=tmp_path / "kept")
    factors = load_file(str(tmp_path / "kept" / "adapter" / "adapter_model.safetensors"))
    assert all(not v.any() for k, v in factors.items() if "lora_B" in k)  # B starts at 0 and the aggregator kept it
    assert kept.rounds["updates_aggregated"].iloc[-1] == 3
    fisher = fedsim.run("scenarios/quickstart.yaml", {**base, "aggregation.method": "mean-with-fisher"}, out=tmp_path / "fisher")
    assert (fisher.clients["bytes_up_fisher"] > 0).all() and (kept.clients["bytes_up_fisher"] == 0).all()
    assert any(v.any() for k, v in load_file(str(tmp_path / "fisher" / "adapter" / "adapter_model.safetensors")).items() if "lora_B" in k)
    with pytest.raises(fedsim.FedsimError, match="train.engine=cohort does not support aggregation.method=mean-with-fisher"):
        fedsim.run("scenarios/quickstart.yaml", {**base, "aggregation.method": "mean-with-fisher", "train.engine": "cohort"}, out=tmp_path / "x")
    with pytest.raises(fedsim.FedsimError, match="not a registered aggregator; allowed: svd, fedavg-factors, fisher"):
        fedsim.run("scenarios/quickstart.yaml", {**base, "aggregation.method": "median"}, out=tmp_path / "y")
    # Over the air the server receives the superposition and merges nothing: a registered merge would be skipped.
    air = {**base, "channel.mode": "aircomp"}
    for method in ("keep-global", "svd"):
        with pytest.raises(
            fedsim.FedsimError, match=f"channel.mode=aircomp does not support aggregation.method={method} .*allowed: aggregation.method=fedavg-factors"
        ):
            fedsim.run("scenarios/quickstart.yaml", {**air, "aggregation.method": method}, out=tmp_path / "z")
    assert not (tmp_path / "z").exists()


def test_a_registered_merge_that_returns_the_wrong_thing_stops_the_run_in_one_line(tmp_path):
    """A merge returning None, or factors not at max_rank, failed far from its cause (an AttributeError, a torch shape
    error in the next round's payload); the run stops with one line naming the aggregator and what it must return."""
    from fedsim.aggregation import LayerMerge

    fedsim.register_aggregator("returns-nothing", lambda glob_a, glob_b, *rest: None)
    fedsim.register_aggregator("returns-rank-1", lambda glob_a, glob_b, *rest: LayerMerge(glob_a[:1], glob_b, 0.0))
    base = {**TINY, "rounds": 1, "adapter.max_rank": 4, "policy.rank": 4}
    for method, got in (("returns-nothing", "NoneType"), ("returns-rank-1", r"A \(1, 32\), B \(32, 4\), importance of shape \(\)")):
        out = tmp_path / method
        with pytest.raises(
            fedsim.FedsimError,
            match=rf"^aggregation.method='{method}': its merge returned {got} for layer 0; allowed: fedsim.aggregation.LayerMerge\(A, B, importance\) with A \(4, 32\) and B \(32, 4\)",
        ):
            fedsim.run("scenarios/quickstart.yaml", {**base, "aggregation.method": method}, out=out)
        assert not (out / "summary.json").exists()


def test_a_registration_the_scenario_schema_cannot_take_is_refused_and_leaves_the_registries_working(tmp_path):
    """A config whose name is a plain str was added to the registry before the scenario's discriminated union refused
    it: every later scenario read in the process then failed with pydantic's error. It is now refused first."""

    class PlainName(BaseModel):
        name: str = "plain-name"

    class TaskConfig(BaseModel):
        name: Literal["not-a-task"] = "not-a-task"

    with pytest.raises(TypeError, match=r"PlainName: a policy config needs a `name: Literal\['<name>'\] = '<name>'` field"):
        fedsim.register_policy(PlainName, TopHalfPolicy)
    with pytest.raises(TypeError, match=r"object: a task must be a subclass of fedsim.tasks.base.Task"):
        fedsim.register_task(TaskConfig, object)
    with pytest.raises(TypeError, match=r"a channel config must be a pydantic model class"):
        fedsim.register_channel(dict, Channel)
    result = fedsim.run("scenarios/quickstart.yaml", {**TINY, "rounds": 1, "policy": {"name": "top-half"}}, out=tmp_path / "run")
    assert len(result.rounds) == 1
    with pytest.raises(fedsim.FedsimError, match="task.name='not-a-task' is not registered"):
        fedsim.run("scenarios/quickstart.yaml", {**TINY, "task": {"name": "not-a-task"}}, out=tmp_path / "task")


def send_back_what_arrived(runtime, payload, client_id, server_round):
    """A toy adapter kind's local training: nothing is trained, the client returns what it received."""
    return {k: v.copy() for k, v in payload.items()}, {"num-examples": len(runtime.partitions[client_id]), "train-loss": 0.0, "tokens": 0}


fedsim.register_adapter("lora-untrained", "fedsim.model:build_lora", send_back_what_arrived, cohort=False)


def test_an_adapter_kind_registered_from_user_code_runs_by_name(tmp_path):
    """The adapter-kind seam: a builder, a local-training function and one registration in this file, named in a
    scenario; its declared limits are checked like the built-in kinds'."""
    base = {**TINY, "train.engine": "per-client"}
    untrained = fedsim.run("scenarios/quickstart.yaml", {**base, "adapter.kind": "lora-untrained"}, out=tmp_path / "untrained")
    lora = fedsim.run("scenarios/quickstart.yaml", base, out=tmp_path / "lora")
    assert untrained.rounds["loss"].nunique() == 1 and lora.rounds["loss"].nunique() > 1  # its clients send zero changes
    assert (untrained.clients["bytes_up"] == lora.clients["bytes_up"]).all()  # the same LoRA layout, metered the same
    with pytest.raises(fedsim.FedsimError, match="train.engine=cohort does not support adapter.kind=lora-untrained"):
        fedsim.run("scenarios/quickstart.yaml", {**base, "adapter.kind": "lora-untrained", "train.engine": "cohort"}, out=tmp_path / "x")
    with pytest.raises(fedsim.FedsimError, match="not a registered adapter kind; allowed: lora, nano, lora-untrained"):
        fedsim.run("scenarios/quickstart.yaml", {**base, "adapter.kind": "prefix"}, out=tmp_path / "y")


def test_a_backbone_family_registered_from_user_code_changes_the_pooling(tmp_path):
    """The backbone seam: a family for a model type, registered from this file, decides the sentence vector,
    and a run with it pools through it."""
    import torch

    from fedsim.backbones import FAMILIES
    from fedsim.backbones.encoder import EncoderBackbone
    from fedsim.model import build_classifier

    class FirstToken(EncoderBackbone):
        calls = 0

        def pool(self, hidden, attention_mask):
            FirstToken.calls += 1
            return hidden[:, 0].float()

    saved = FAMILIES["bert"]
    try:
        fedsim.register_backbone("bert", FirstToken(("query", "value")))
        model = build_classifier("tiny-random", 3).eval()
        ids = torch.tensor([[101, 2023, 2003, 102]])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            hidden = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            torch.testing.assert_close(model.features(ids, mask), hidden[:, 0])
        before = FirstToken.calls
        # A seed no other test uses, so the round builds its own model (the runtime cache keys on the seed).
        result = fedsim.run("scenarios/quickstart.yaml", {**TINY, "seed": 424242}, out=tmp_path / "run")
        assert FirstToken.calls > before and len(result.rounds) == TINY["rounds"]
        # Flower's actors would pool with the built-in family while this process evaluates with this one.
        with pytest.raises(fedsim.FedsimError, match="model.backbone=tiny-random \\(model_type bert, whose family you registered\\)"):
            fedsim.run("scenarios/quickstart.yaml", {**TINY, "engine": "flower"}, out=tmp_path / "flower")
    finally:
        FAMILIES["bert"] = saved
        REGISTERED_HERE["backbone"].discard("bert")
