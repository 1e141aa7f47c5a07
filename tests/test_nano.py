"""NanoAdapter clients (adapter.kind: nano): split computation, metered split traffic, Fisher merging."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedsim.adapter_state import AdapterState, truncate
from fedsim.aggregation import aggregate
from fedsim.batches import client_batches
from fedsim.nano import NanoClassifier, client_storage, split_step, split_train
from fedsim.runner import run_scenario
from fedsim.runtime import get_runtime
from fedsim.types import FedsimError

NANO = {"adapter": {"kind": "nano", "max_rank": 4}, "aggregation": {"method": "fisher"}, "policy": {"name": "fixed", "rank": 4}}


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --- Fisher merging ---------------------------------------------------------------------------
def _uploads(rng, n_clients, rank, fisher_values):
    shapes = {"A.0": (rank, 6), "B.0": (5, rank), "A.1": (rank, 3), "B.1": (4, rank)}
    uploads = []
    for k in range(n_clients):
        upload = {key: rng.standard_normal(shape).astype(np.float32) for key, shape in shapes.items()}
        upload |= {f"F.{key}": np.full(shape, fisher_values[k], dtype=np.float32) for key, shape in shapes.items()}
        upload |= {"head.weight": rng.standard_normal((2, 5)).astype(np.float32), "head.bias": rng.standard_normal(2).astype(np.float32)}
        uploads.append(upload)
    return uploads


def _global(rng, rank):
    return AdapterState(
        A=[rng.standard_normal((rank, 6)).astype(np.float32), rng.standard_normal((rank, 3)).astype(np.float32)],
        B=[rng.standard_normal((5, rank)).astype(np.float32), rng.standard_normal((4, rank)).astype(np.float32)],
        head={"head.weight": np.zeros((2, 5), np.float32), "head.bias": np.zeros(2, np.float32)},
    )


def test_fisher_merging_equals_fedavg_when_all_fisher_values_are_equal():
    rng = np.random.default_rng(0)
    state = _global(rng, 4)
    uploads = _uploads(rng, 3, 4, [0.37, 0.37, 0.37])
    weights = [10.0, 30.0, 60.0]
    fisher, _, _ = aggregate(state, uploads, weights, "fisher", np.random.default_rng(1), average="models")
    fedavg, _, _ = aggregate(state, uploads, weights, "fedavg-factors", np.random.default_rng(1), average="models")
    for i in range(2):
        np.testing.assert_allclose(fisher.A[i], fedavg.A[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fisher.B[i], fedavg.B[i], rtol=1e-5, atol=1e-6)
        expected = sum(w * u[f"A.{i}"].astype(np.float64) for w, u in zip(np.array(weights) / 100, uploads))
        np.testing.assert_allclose(fisher.A[i], expected, rtol=1e-5, atol=1e-6)


def test_fisher_merging_follows_the_client_whose_fisher_dominates():
    rng = np.random.default_rng(2)
    state = _global(rng, 4)
    uploads = _uploads(rng, 3, 4, [1e-4, 1e3, 1e-4])
    merged, _, _ = aggregate(state, uploads, [1.0, 1.0, 1.0], "fisher", np.random.default_rng(1), average="models")
    fedavg, _, _ = aggregate(state, uploads, [1.0, 1.0, 1.0], "fedavg-factors", np.random.default_rng(1), average="models")
    for i in range(2):
        np.testing.assert_allclose(merged.A[i], uploads[1][f"A.{i}"], atol=1e-5)
        np.testing.assert_allclose(merged.B[i], uploads[1][f"B.{i}"], atol=1e-5)
        assert not np.allclose(fedavg.A[i], uploads[1][f"A.{i}"], atol=1e-2)

    # Parameter-wise: client 0 dominates one entry, client 2 another.
    uploads = _uploads(rng, 3, 4, [1.0, 1.0, 1.0])
    uploads[0]["F.A.0"][1, 2] = 1e6
    uploads[2]["F.B.1"][3, 0] = 1e6
    merged, _, _ = aggregate(state, uploads, [1.0, 1.0, 1.0], "fisher", np.random.default_rng(1), average="models")
    assert merged.A[0][1, 2] == pytest.approx(uploads[0]["A.0"][1, 2], abs=1e-4)
    assert merged.B[1][3, 0] == pytest.approx(uploads[2]["B.1"][3, 0], abs=1e-4)


def test_fisher_merging_over_mixed_ranks_keeps_unsent_components():
    rng = np.random.default_rng(3)
    state = _global(rng, 4)
    low = {
        k: v[:2] if k in ("A.0", "A.1", "F.A.0", "F.A.1") else (v[:, :2] if k.startswith(("B.", "F.B.")) else v)
        for k, v in _uploads(rng, 1, 4, [1.0])[0].items()
    }
    merged, _, _ = aggregate(state, [low], [1.0], "fisher", np.random.default_rng(1), average="models")
    np.testing.assert_allclose(merged.A[0][:2], low["A.0"], atol=1e-6)
    np.testing.assert_array_equal(merged.A[0][2:], state.A[0][2:])  # nobody sent components 2, 3
    np.testing.assert_array_equal(merged.B[1][:, 2:], state.B[1][:, 2:])


# --- split computation ------------------------------------------------------------------------
@pytest.fixture
def nano_runtime(tiny):
    return get_runtime(tiny(**NANO))


def _randomise_adapters(model: NanoClassifier, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in range(len(model.layers)):
            a, b = model.factor(i)
            a.copy_(torch.randn(a.shape, generator=generator) * 0.3)
            b.copy_(torch.randn(b.shape, generator=generator) * 0.3)  # B != 0, so A gets gradient too
    model.set_ranks([3, 3])


def _grads(model: NanoClassifier) -> list[torch.Tensor]:
    params = [p for i in range(len(model.layers)) for p in model.factor(i)] + model.head_parameters()
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def test_split_training_gives_the_same_gradients_as_the_whole_model_on_one_side(nano_runtime):
    model: NanoClassifier = nano_runtime.model
    _randomise_adapters(model, 0)
    params = [p for i in range(len(model.layers)) for p in model.factor(i)] + model.head_parameters()
    batch = nano_runtime.batch("train", np.arange(12))
    labels = batch.pop("labels")
    # Both streams active: segment 1 on the second half of each row's tokens.
    batch["token_type_ids"] = (torch.arange(batch["input_ids"].shape[1]) >= batch["input_ids"].shape[1] // 2).long().expand_as(batch["input_ids"]).contiguous()

    for p in params:
        p.grad = None
    split_loss, up, down = split_step(model, batch, labels, bits=32)
    split = _grads(model)
    for p in params:
        p.grad = None
    whole_loss = F.cross_entropy(model.model(**batch).float(), labels)
    whole_loss.backward()
    whole = _grads(model)

    assert split_loss.item() == pytest.approx(whole_loss.item(), rel=1e-6)
    for g_split, g_whole in zip(split, whole):
        torch.testing.assert_close(g_split, g_whole, rtol=1e-5, atol=1e-7)
    assert all(float(g.abs().sum()) > 0 for g in whole[:2] + whole[2:4])  # both streams' A and B got gradient
    assert float(whole[0][3:].abs().sum()) == 0.0  # components beyond the rank get none
    assert up == down == batch["input_ids"].numel() * model.hidden_size * 4


def test_metered_activation_bytes_are_batch_times_padded_width_times_hidden_times_bits(tiny):
    for bits in (32, 8):
        scenario = tiny(**NANO, channel={"kind": "awgn"}, quantization={"bits_per_param": bits})
        runtime = get_runtime(scenario)
        payload = truncate(runtime.initial_state, [4, 0])
        upload, metrics = split_train(runtime, payload, client_id=1, server_round=2)
        batches = list(client_batches(runtime, 1, 2))
        widths = [int(runtime.train.lengths[b].max()) for b in batches]  # dynamic padding: each batch's own longest
        assert len(set(widths)) > 1 or widths[0] < scenario.data.max_length
        values = [len(b) * w * runtime.model.hidden_size for b, w in zip(batches, widths)]
        expected = sum(v * bits // 8 + (4 if bits < 32 else 0) for v in values)  # + one float32 scale per quantised tensor
        assert metrics["bytes-up-activations"] == expected
        assert metrics["bytes-down-gradients"] == expected
        assert set(upload) == {"A.0", "B.0", "F.A.0", "F.B.0", "head.weight", "head.bias"}  # segment 1 untouched: not sent


def test_nano_client_holds_embeddings_and_adapters_only(nano_runtime, tiny):
    client, whole = client_storage(nano_runtime.model)
    embeddings = sum(p.numel() for p in nano_runtime.model.classifier.encoder.embeddings.parameters())
    assert client == embeddings + 2 * 2 * 4 * nano_runtime.model.hidden_size
    lora_client, lora_whole = client_storage(get_runtime(tiny()).model)
    assert lora_whole == whole
    assert client < whole < lora_client


def test_nano_and_fisher_with_unsupported_engines_are_one_line_errors(tiny):
    with pytest.raises(FedsimError, match="train.engine=cohort does not support adapter.kind=nano"):
        tiny(**NANO, train={"engine": "cohort"})
    with pytest.raises(FedsimError, match="train.engine=cohort does not support aggregation.method=fisher"):
        tiny(aggregation={"method": "fisher"}, train={"engine": "cohort"})
    with pytest.raises(FedsimError, match="channel.mode=aircomp does not support adapter.kind=nano"):
        tiny(**NANO, channel={"kind": "awgn", "mode": "aircomp"})


@pytest.mark.parametrize("policy", [{"name": "channel-greedy"}, {"name": "ppo"}, {"name": "airllm"}])
def test_policies_that_price_the_upload_by_rank_are_refused_with_nano(tiny, policy):
    # A nano client's upload is mostly activations, which the rank does not set: channel-greedy's "largest rank that
    # meets the deadline" then picked ranks whose uploads all missed it.
    with pytest.raises(FedsimError, match=f"policy.name={policy['name']} sizes ranks by .* allowed with adapter.kind=nano: policy.name=fixed or adalora"):
        tiny(**{**NANO, "policy": policy}, channel={"kind": "awgn", "deadline_s": 0.05})


def test_validate_checks_per_layer_ranks_against_nanos_two_streams(tmp_path, capsys):
    from fedsim.adapters import ADAPTERS
    from fedsim.cli import main
    from fedsim.nano import STREAMS

    assert ADAPTERS["nano"].adapted_layers == STREAMS
    fields = ["model.backbone=tiny-random", "adapter.kind=nano", "aggregation.method=fisher", "train.engine=per-client", "adapter.max_rank=4", "policy.rank=4"]
    nano = [arg for field in fields for arg in ("--set", field)]
    assert main(["validate", "scenarios/quickstart.yaml", *nano, "--set", "policy.ranks=[4]"]) == 2
    assert "policy.ranks has 1 entries, but the adapter has 2 adapted layers" in capsys.readouterr().err
    assert main(["validate", "scenarios/quickstart.yaml", *nano, "--set", "policy.ranks=[4, 0]"]) == 0


def test_a_nano_client_with_nothing_to_train_is_sent_no_gradient(tiny):
    runtime = get_runtime(tiny(**NANO))
    _, idle = split_train(runtime, truncate(runtime.initial_state, [0, 0]), 1, 1)
    _, busy = split_train(runtime, truncate(runtime.initial_state, [4, 0]), 1, 1)
    assert idle["bytes-down-gradients"] == 0 and idle["bytes-up-activations"] == busy["bytes-up-activations"] > 0
    assert busy["bytes-down-gradients"] == busy["bytes-up-activations"]
    # Only stream 1 has a rank, and no token of these single texts is in it: nothing to train there either.
    _, other = split_train(runtime, truncate(runtime.initial_state, [0, 4]), 1, 1)
    assert other["bytes-down-gradients"] == 0


def test_nano_clients_report_adalora_sensitivity_as_lora_clients_do(tiny):
    """Without it the adalora policy (importance: sensitivity) silently fell back to singular values under nano."""

    runtime = get_runtime(tiny(**{**NANO, "policy": {"name": "adalora"}}))
    _, metrics = split_train(runtime, truncate(runtime.initial_state, [4] * runtime.n_layers), 1, 1)
    assert len(metrics["sensitivity"]) == runtime.n_layers and metrics["sensitivity"][0] > 0  # stream 0: every token
    plain_runtime = get_runtime(tiny(**NANO))  # the same cached model, now asked for by a fixed-rank scenario
    _, plain = split_train(plain_runtime, truncate(plain_runtime.initial_state, [4] * plain_runtime.n_layers), 1, 1)
    assert "sensitivity" not in plain


# --- end to end -------------------------------------------------------------------------------
def test_nano_run_end_to_end_meters_adapter_and_split_traffic(tmp_path, tiny):
    scenario = tiny(**NANO, channel={"kind": "awgn"}, quantization={"bits_per_param": 8})
    summary = run_scenario(scenario, tmp_path / "run", progress=False)
    clients = read_rows(tmp_path / "run" / "clients.csv")
    rounds = read_rows(tmp_path / "run" / "rounds.csv")
    hidden = get_runtime(scenario).model.hidden_size
    for row in clients:
        assert int(row["bytes_up"]) == int(row["bytes_up_adapter"]) + int(row["bytes_up_activations"])
        assert int(row["bytes_up_activations"]) == int(row["bytes_down_gradients"]) > 0
        # 8-bit codes + a 4-byte scale per tensor: A, B and their Fisher of segment 0 only (segment 1 saw
        # no token, so it is not sent), and no head (it lives on the server)
        rank = int(row["ranks"].split()[0])
        assert int(row["bytes_up_adapter"]) == 4 * (rank * hidden + 4)
        assert int(row["params_up"]) == 4 * rank * hidden  # A, B and their Fisher estimates; the head stays on the server
        assert int(row["bytes_up_fisher"]) == int(row["bytes_up_adapter"]) // 2
    assert sum(int(r["bytes_up_activations"]) for r in rounds) == summary["total_bytes_up_activations"]
    assert summary["total_bytes_up"] == summary["total_bytes_up_adapter"] + summary["total_bytes_up_activations"]
    assert 0 < summary["client_params_ratio"] < 1
    assert (tmp_path / "run" / "adapter" / "nano_adapter.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "adapter" / "nano_config.json").read_text())["kind"] == "nano"

    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "adapter" / "nano_adapter.safetensors"))
    assert saved["nano.segment0.lora_B"].abs().sum() > 0  # trained
    assert torch.equal(saved["nano.segment1.lora_B"], torch.zeros_like(saved["nano.segment1.lora_B"]))  # never saw a token


def test_lora_clients_send_a_fisher_estimate_when_fisher_merging_is_on(tiny):
    from fedsim.training import local_train

    runtime = get_runtime(tiny(aggregation={"method": "fisher"}))
    upload, _ = local_train(runtime, truncate(runtime.initial_state, [2] * runtime.n_layers), client_id=0, server_round=1)
    for i in range(runtime.n_layers):
        assert upload[f"F.A.{i}"].shape == upload[f"A.{i}"].shape == (2, runtime.model.factor(i)[0].shape[1])
        assert upload[f"F.B.{i}"].shape == upload[f"B.{i}"].shape
        assert (upload[f"F.A.{i}"] >= 0).all() and upload[f"F.B.{i}"].sum() > 0
    plain, _ = local_train(get_runtime(tiny()), truncate(runtime.initial_state, [2] * runtime.n_layers), client_id=0, server_round=1)
    assert not any(key.startswith("F.") for key in plain)
