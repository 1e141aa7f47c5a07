"""End-to-end runs on the inline engine (tiny-random): determinism, metering, export."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from fedsim.adapter_state import load_payload, truncate
from fedsim.runner import run_scenario
from fedsim.runtime import get_runtime
from fedsim.training import local_train


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_same_scenario_and_seed_give_byte_identical_ledgers(tmp_path, tiny):
    scenario = tiny()
    run_scenario(scenario, tmp_path / "a", progress=False)
    run_scenario(scenario, tmp_path / "b", progress=False)
    for name in ("rounds.csv", "clients.csv", "config.yaml"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    run_scenario(tiny(seed=4), tmp_path / "c", progress=False)
    assert (tmp_path / "a" / "clients.csv").read_bytes() != (tmp_path / "c" / "clients.csv").read_bytes()


def test_run_directory_is_complete_and_sealed_by_summary(tmp_path, tiny):
    out = tmp_path / "run"
    summary = run_scenario(tiny(), out, progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "rounds.csv", "clients.csv", "timings.csv", "summary.json", "adapter"} <= names
    assert not any(n.startswith(".") for n in names), "no temporary files left behind"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    # What made the numbers: fedsim's commit (this checkout's), the libraries' versions, the CPU.
    import importlib.metadata
    import subprocess
    from pathlib import Path

    import torch

    environment = summary["environment"]
    repo = Path(__file__).resolve().parents[1]
    git = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True) if (repo / ".git").exists() else None
    head = git.stdout.strip() if git is not None and git.returncode == 0 else None  # None: no checkout, or git refuses it
    assert environment["fedsim_commit"] == head and environment["fedsim_version"] == importlib.metadata.version("fedsim")
    assert environment["libraries"]["torch"] == importlib.metadata.version("torch") and torch.__version__.startswith(environment["libraries"]["torch"])
    assert environment["cpu"] and environment["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    rounds = read_rows(out / "rounds.csv")
    clients = read_rows(out / "clients.csv")
    assert [int(r["round"]) for r in rounds] == [1, 2]
    assert len(clients) == 2 * 3
    assert sum(int(c["bytes_up"]) for c in clients) == summary["total_bytes_up"]
    assert int(rounds[-1]["cum_bytes_up"]) == summary["total_bytes_up"]


def test_the_summary_says_which_examples_each_accuracy_was_measured_on(tmp_path, tiny):
    summary = run_scenario(tiny(rounds=3, data={"eval_full_final": True}), tmp_path / "run", progress=False)
    rounds = read_rows(tmp_path / "run" / "rounds.csv")
    subset = [float(r["accuracy"]) for r in rounds if int(r["eval_examples"]) == 64]
    assert [int(r["eval_examples"]) for r in rounds][:2] == [64, 64] and int(rounds[-1]["eval_examples"]) > 64
    assert summary["final_eval_examples"] == int(rounds[-1]["eval_examples"]) == summary["test_examples"] and summary["first_round_eval_examples"] == 64
    # The whole-test-set final is not a candidate for the best of the 64-example rounds.
    assert summary["best_accuracy"] == max(subset) and summary["best_accuracy_eval_examples"] == 64


def test_bytes_up_ratio_rank8_vs_rank2_is_exact(tmp_path, tiny):
    run_scenario(tiny(policy={"name": "fixed", "rank": 8}), tmp_path / "r8", progress=False)
    run_scenario(tiny(policy={"name": "fixed", "rank": 2}), tmp_path / "r2", progress=False)
    runtime = get_runtime(tiny())
    per_rank = sum(runtime.model.params_per_rank())  # A row + B column, summed over adapted layers
    head = runtime.model.head_param_count()
    params8, params2 = 8 * per_rank + head, 2 * per_rank + head
    for r8, r2 in zip(read_rows(tmp_path / "r8" / "rounds.csv"), read_rows(tmp_path / "r2" / "rounds.csv")):
        bytes8, bytes2 = int(r8["bytes_up"]), int(r2["bytes_up"])
        assert bytes8 * params2 == bytes2 * params8
        assert bytes8 == 3 * params8 * 4  # 3 clients, float32


def test_components_beyond_rank_are_masked_and_untrained(tiny):
    runtime = get_runtime(tiny())
    model = runtime.model
    payload = truncate(runtime.initial_state, [2] * runtime.n_layers)
    load_payload(model, payload)
    batch = runtime.train.batch(np.arange(4))
    with torch.no_grad():
        before = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        for i in range(runtime.n_layers):
            a, b = model.factor(i)
            a[2:] = torch.randn_like(a[2:])
            b[:, 2:] = torch.randn_like(b[:, 2:])
        after = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(before, after)
    upload, _ = local_train(runtime, payload, client_id=0, server_round=1)
    assert upload["A.0"].shape[0] == 2 and upload["B.0"].shape[1] == 2
    assert not np.allclose(upload["A.0"], payload["A.0"]), "components inside the rank are trained"


def test_rank_zero_layer_is_neither_trained_nor_sent(tiny):
    runtime = get_runtime(tiny())
    ranks = [0] + [4] * (runtime.n_layers - 1)
    upload, _ = local_train(runtime, truncate(runtime.initial_state, ranks), client_id=1, server_round=1)
    assert "A.0" not in upload and "B.0" not in upload and "A.1" in upload


def test_exported_adapter_loads_with_peft_and_gives_the_same_logits(tmp_path, tiny):
    from peft import PeftModel

    from fedsim.model import build_classifier

    scenario = tiny(rounds=1)
    run_scenario(scenario, tmp_path / "run", progress=False)
    runtime = get_runtime(scenario)  # this process's simulator model now holds the final global adapter
    batch = runtime.test.batch(np.arange(16))
    with torch.no_grad():
        simulator = runtime.model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        base = build_classifier("tiny-random", len(runtime.label_names))
        peft_model = PeftModel.from_pretrained(base, str(tmp_path / "run" / "adapter")).eval()
        exported = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(exported, simulator, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(exported, base.head(torch.zeros(1, base.head.in_features))), "the trained head is loaded"


def test_simulated_nodes_map_every_client_without_a_message():
    """On a simulation engine client k goes to the k-th node id: complete, deterministic, no query sent."""
    from fedsim.client_app import app
    from fedsim.inline_grid import InlineGrid
    from fedsim.server_app import discover_nodes, simulated_nodes

    grid = InlineGrid(app, 7)
    sent = []
    grid.push_messages = lambda messages: sent.extend(messages) or []  # any message would land here
    mapping = simulated_nodes(grid, 7)
    assert mapping == {k: node for k, node in enumerate(sorted(grid.get_node_ids()))} == simulated_nodes(InlineGrid(app, 7), 7)
    assert not sent
    # the deployment engine's discovery (one query per node) agrees on the inline engine, where partition k is node k
    assert discover_nodes(InlineGrid(app, 7), 7) == mapping


def test_a_client_whose_node_is_gone_is_charged_no_downlink(tiny):
    """Its train message is never sent (deployment: the SuperNode left), so it costs no bytes and no time down."""
    from fedsim.client_app import app
    from fedsim.inline_grid import InlineGrid
    from fedsim.round.record import NO_NODE
    from fedsim.server_app import ABSENT_NODE, build_strategy, run_train_round, simulated_nodes

    scenario = tiny(clients={"num_clients": 8, "per_round": 6})
    strategy = build_strategy(scenario)
    grid = InlineGrid(app, scenario.clients.num_clients)
    routing = {c: (node if c % 2 else ABSENT_NODE) for c, node in simulated_nodes(grid, 8).items()}  # even clients' nodes are gone
    result = run_train_round(grid, strategy, 1, routing, None)
    gone = [r for r in result.client_rows if r.drop_reason == NO_NODE]
    here = [r for r in result.client_rows if r.drop_reason != NO_NODE]
    assert gone and here
    assert {(r.bytes_down, r.extra["wire_bytes_down"]) for r in gone} == {(0, 0)}
    assert all(r.bytes_down > 0 for r in here) and result.row.bytes_down == sum(r.bytes_down for r in here)


def test_client_availability_samples_only_online_clients(tmp_path, tiny):
    """clients.availability: each client online with probability p per round; the server samples among them."""
    import pandas as pd

    scenario = tiny(rounds=12, clients={"num_clients": 6, "per_round": 3, "availability": 0.3})
    run_scenario(scenario, tmp_path / "a", progress=False)
    rounds = pd.read_csv(tmp_path / "a" / "rounds.csv")
    assert (rounds["clients_online"] >= 1).all() and (rounds["clients_selected"] == rounds["clients_online"].clip(upper=3)).all()
    assert (rounds["clients_online"] < 3).any(), "with p = 0.3 and 6 clients, some round has fewer than 3 online"
    run_scenario(scenario, tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "clients.csv").read_bytes() == (tmp_path / "b" / "clients.csv").read_bytes()
    full = tiny(rounds=1, clients={"num_clients": 6, "per_round": 3, "availability": 1.0})
    run_scenario(full, tmp_path / "full", progress=False)
    assert "clients_online" not in pd.read_csv(tmp_path / "full" / "rounds.csv").columns


def test_an_availability_trace_decides_who_is_online_in_each_round(tmp_path, tiny):
    """clients.availability_trace: clients are sampled only inside their online intervals (FedScale-style traces)."""
    import pandas as pd

    trace = tmp_path / "trace.csv"
    trace.write_text("client,from_round,to_round\n0,1,2\n1,1,3\n2,2,3\n3,3,3\n4,1,1\n")  # client 5 is never online
    online = {1: {0, 1, 4}, 2: {0, 1, 2}, 3: {1, 2, 3}}
    scenario = tiny(rounds=3, clients={"num_clients": 6, "per_round": 2, "availability_trace": str(trace)})
    run_scenario(scenario, tmp_path / "a", progress=False)
    clients = pd.read_csv(tmp_path / "a" / "clients.csv")
    assert all(set(group["client"]) <= online[r] and len(group) == 2 for r, group in clients.groupby("round"))
    assert list(pd.read_csv(tmp_path / "a" / "rounds.csv")["clients_online"]) == [3, 3, 3]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("client,from_round,to_round\n0,1,1\n", "no client is online in round 2 (of 3)"),
        ("client,from,to\n0,1,3\n", "expected a header client,from_round,to_round"),
        ("client,from_round,to_round\n9,1,3\n", "line 2: client 9 rounds 1..3; allowed: client 0..5"),
        ("client,from_round,to_round\n0,one,3\n", "line 2: {'client': '0', 'from_round': 'one', 'to_round': '3'} is not three integers"),
    ],
)
def test_a_bad_availability_trace_is_one_line_exit_2(tmp_path, capsys, text, expected):
    from fedsim.cli import main

    trace = tmp_path / "trace.csv"
    trace.write_text(text)
    args = ["--set", "model.backbone=tiny-random", "--set", "rounds=3", "--set", "clients.num_clients=6", "--set", "clients.per_round=2"]
    code = main(["validate", "scenarios/quickstart.yaml", *args, "--set", f"clients.availability_trace={trace}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err


def test_the_runtime_cache_shares_model_and_data_but_serves_the_latest_settings(tiny):
    """get_runtime builds a model and data once per (model, data, adapter, clients, seed, device) and keeps two;
    training, channel and policy settings always come from the scenario asked for now."""
    from fedsim.runtime import _RUNTIMES, get_runtime

    _RUNTIMES.clear()
    first = get_runtime(tiny(train={"lr": 1e-3}))
    again = get_runtime(tiny(train={"lr": 5e-3}, channel={"snr_db": 3.0}))
    assert again is first and again.scenario.train.lr == 5e-3 and again.scenario.channel.snr_db == 3.0
    other = get_runtime(tiny(seed=99))  # a new seed: new partitions, a new runtime
    assert other is not first and len(_RUNTIMES) == 2
    get_runtime(tiny(seed=98))
    assert len(_RUNTIMES) == 2 and get_runtime(tiny(train={"lr": 1e-3})) is not first  # the oldest was let go


def test_downlink_latency_is_the_slowest_broadcast_at_the_downlink_rate(tmp_path, tiny):
    """rounds.csv downlink_latency_s = max_k bits_down_k / (B_dl log2(1 + SNR_dl)) (AWGN, Shannon rate)."""
    import pandas as pd

    scenario = tiny(rounds=2, channel={"downlink_bandwidth_hz": 2e5, "downlink_snr_db": 10.0})
    run_scenario(scenario, tmp_path / "a", progress=False)
    rounds, clients = pd.read_csv(tmp_path / "a" / "rounds.csv"), pd.read_csv(tmp_path / "a" / "clients.csv")
    rate = 2e5 * np.log2(1 + 10.0)
    expected = clients.groupby("round")["bytes_down"].max() * 8 / rate
    np.testing.assert_allclose(rounds.set_index("round")["downlink_latency_s"], expected, rtol=1e-9)


@pytest.mark.parametrize("backbone", ["tiny-random", "minilm"])
@pytest.mark.parametrize("targets, layers", [(["query", "value"], None), (["key"], [1]), (["query", "key", "value"], [0, 1])])
def test_adapted_dims_read_off_the_config_match_the_weightless_model(backbone, targets, layers):
    """The torch-free reading of a BERT config gives exactly the modules and shapes a meta-device model has."""
    from fedsim.backbone_check import adapted_dims, backbone_config

    fast = adapted_dims(backbone_config(backbone), targets, layers)
    exact = adapted_dims(backbone_config(backbone, hf=True), targets + ["__meta__"], layers)  # an unknown target forces the meta path
    assert fast == exact and len(fast) == len(targets) * (len(layers) if layers else backbone_config(backbone).num_hidden_layers)


def test_validate_answers_without_importing_torch():
    """`fedsim validate` of a shipped scenario reads configs and data only (torch loads in ~2 s; a run needs it, a check does not)."""
    import subprocess
    import sys

    code = "import sys; from fedsim.cli import main; rc = main(['validate', 'scenarios/quickstart.yaml']); print(rc, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "0 False", done.stderr


def test_a_run_without_threads_uses_the_process_default_whatever_an_earlier_run_set(tmp_path, tiny):
    """torch's thread count changes float sums: a `threads: 1` run in the same process (a notebook, an in-process
    sweep) must not leak into the next run's `threads: null`."""
    from fedsim.config import load_scenario
    from tests.test_golden import TINY

    scenario = load_scenario("scenarios/quickstart.yaml", [*TINY, "engine=inline"])  # the cohort engine: threads matter
    run_scenario(scenario, tmp_path / "a", progress=False)
    run_scenario(scenario.model_copy(update={"threads": 1}), tmp_path / "one", progress=False)
    run_scenario(scenario, tmp_path / "b", progress=False)
    for name in ("rounds.csv", "clients.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_a_small_ledger_value_keeps_ten_significant_digits():
    from fedsim.ledger import format_float

    # An over-the-air MSE at high SNR: 10 decimals alone wrote it as 0.0.
    assert float(format_float(3.456789012345e-11)) == pytest.approx(3.456789012345e-11, rel=1e-9)
    assert format_float(0.0022055172083) == "0.002205517208"
    assert format_float(1234.567890123456) == "1234.5678901235"  # large values: 10 decimals, as before
    assert format_float(float("nan")) == "nan" and format_float(np.float64(0.5)) == "0.5"
