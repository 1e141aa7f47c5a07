"""The channel inside real runs (tiny-random backbone, inline engine), and bad channel config at the CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from channels.quantization import expected_bytes
from fedsim.cli import main
from fedsim.config import load_scenario
from fedsim.runner import run_scenario

QUICKSTART = "scenarios/quickstart.yaml"
FAST = ["engine=inline", "model.backbone=tiny-random", "rounds=2", "data.eval_samples=32", "data.eval_full_final=false", "train.local_steps=2"]


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_quickstart_drops_updates_at_harsh_and_none_at_ideal(tmp_path):
    ledgers = {}
    for preset in ("harsh", "ideal"):
        scenario = load_scenario(QUICKSTART, FAST + [f"channel={{preset: {preset}, bandwidth_hz: 1.0e+6}}"])
        run_scenario(scenario, tmp_path / preset, progress=False)
        ledgers[preset] = (read_rows(tmp_path / preset / "rounds.csv"), read_rows(tmp_path / preset / "clients.csv"))

    rounds, clients = ledgers["harsh"]
    dropped = [c for c in clients if c["delivered"] == "0"]
    assert dropped, "harsh drops some updates"
    assert {c["drop_reason"] for c in dropped} <= {"outage", "packet-error", "deadline"}
    assert all(c["drop_reason"] == "" for c in clients if c["delivered"] == "1")
    for column in ("snr_db", "fading_gain", "rate_bps", "latency_s", "energy_j", "packets", "retransmissions"):
        assert all(c[column] != "" for c in clients), column
    assert len({c["fading_gain"] for c in clients}) > 1  # Rayleigh: drawn per client per round
    assert sum(int(r["clients_dropped"]) for r in rounds) == len(dropped)
    assert all(int(r["packets"]) == sum(int(c["packets"]) for c in clients if c["round"] == r["round"]) for r in rounds)

    ideal_rounds, ideal_clients = ledgers["ideal"]
    assert all(c["delivered"] == "1" for c in ideal_clients)
    assert all(r["clients_dropped"] == "0" for r in ideal_rounds)
    # Same clients, same ranks, same bytes sent; fewer of them arrive at harsh.
    assert [r["cum_bytes_up"] for r in rounds] == [r["cum_bytes_up"] for r in ideal_rounds]
    for harsh_row, ideal_row in zip(rounds, ideal_rounds):
        assert int(harsh_row["cum_bytes_delivered"]) <= int(ideal_row["cum_bytes_delivered"])
    assert int(rounds[-1]["cum_bytes_delivered"]) < int(ideal_rounds[-1]["cum_bytes_delivered"])
    assert int(rounds[-1]["cum_bytes_delivered"]) == sum(int(c["bytes_up"]) for c in clients if c["delivered"] == "1")


def test_aircomp_run_with_4_bit_uploads(tmp_path, tiny):
    scenario = tiny(
        channel={"mode": "aircomp", "kind": "rayleigh", "snr_db": 10.0, "aircomp": {"gain_threshold": 0.5}},  # P(|h|^2 < 0.5) = 0.39
        aggregation={"method": "fedavg-factors"},
        quantization={"bits_per_param": 4, "rounding": "stochastic"},
        policy={"name": "fixed", "rank": 3},
    )
    run_scenario(scenario, tmp_path / "air", progress=False)
    rounds = read_rows(tmp_path / "air" / "rounds.csv")
    clients = read_rows(tmp_path / "air" / "clients.csv")
    assert all(float(r["aircomp_mse"]) > 0 for r in rounds if int(r["clients_dropped"]) < int(r["clients_selected"]))
    for r in rounds:  # noise and truncation parts, both reported; without truncation the error is all noise
        if int(r["clients_dropped"]) < int(r["clients_selected"]):
            assert float(r["aircomp_mse_noise"]) > 0 and float(r["aircomp_mse_truncation"]) >= 0
            if int(r["clients_dropped"]) == 0:
                assert float(r["aircomp_mse_truncation"]) == 0 and float(r["aircomp_mse"]) == float(r["aircomp_mse_noise"])
    assert all(np.isfinite(float(r["loss"])) for r in rounds)
    # One slot per round whatever the number of senders (no computation time here); a round nobody sends in takes none.
    slots = {float(r["uplink_latency_s"]) for r in rounds if int(r["clients_dropped"]) < int(r["clients_selected"])}
    assert len(slots) == 1 and slots.pop() > 0
    assert all(float(r["uplink_latency_s"]) == 0.0 for r in rounds if int(r["clients_dropped"]) == int(r["clients_selected"]))
    assert {c["drop_reason"] for c in clients} <= {"", "aircomp-truncated"}
    # 4-bit codes, two per byte, plus a 4-byte scale per tensor: exactly what the arrays sent weigh.
    from fedsim.runtime import get_runtime

    model = get_runtime(scenario).model
    shapes = {"head.weight": tuple(model.head.weight.shape), "head.bias": tuple(model.head.bias.shape)}
    for i in range(len(model.layers)):
        a, b = model.factor(i)
        shapes[f"A.{i}"], shapes[f"B.{i}"] = (3, a.shape[1]), (b.shape[0], 3)
    # Charged to the senders only: a truncated client stays silent.
    senders, silent = [c for c in clients if c["delivered"] == "1"], [c for c in clients if c["drop_reason"] == "aircomp-truncated"]
    assert senders and silent
    assert {int(c["bytes_up"]) for c in senders} == {expected_bytes(shapes, 4)}
    assert {int(c["params_up"]) for c in senders} == {sum(int(np.prod(s)) for s in shapes.values())}
    assert {(int(c["bytes_up"]), int(c["params_up"]), float(c["latency_s"])) for c in silent} == {(0, 0, 0.0)}
    assert sum(int(r["bytes_up"]) for r in rounds) == sum(int(c["bytes_up"]) for c in senders)
    # Rank 3 of max_rank 8: B's columns past 3 are not on the air, so they stay at their initial 0 (received noise
    # there would leak into the model through the global A's rows).
    from safetensors.numpy import load_file

    b = [v for k, v in load_file(str(tmp_path / "air" / "adapter" / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert b and all(v.shape[1] == 8 and not v[:, 3:].any() and v[:, :3].any() for v in b)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("channel.bandwidth_hz=-1", "channel.bandwidth_hz = -1 is invalid: Input should be greater than 0"),
        ("channel.k_factor=-0.5", "channel.k_factor = -0.5 is invalid: Input should be greater than or equal to 0"),
        ("quantization.bits_per_param=12", "quantization.bits_per_param = 12 is invalid: Input should be 32, 16, 8 or 4"),
        ("channel.preset=stormy", "channel: unknown preset 'stormy'; allowed: ideal, good, moderate, challenging, harsh"),
        ("channel={preset: nope}", "unknown preset 'nope'"),
        ("channel.kind=nakagami", "Input should be 'awgn', 'rayleigh' or 'rician'"),
        ("channel.packet_error=true", "channel.packet_error: true no longer names a model: pick one of average|threshold|per-packet"),
    ],
)
def test_bad_channel_config_is_one_line_exit_2(tmp_path, capsys, override, expected):
    code = main(["run", QUICKSTART, "--set", override, "--out", str(tmp_path / "never"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err, err
    assert "Traceback" not in err and not (tmp_path / "never").exists()


def test_quantization_is_configured_apart_from_the_channel_and_the_older_spelling_still_reads(tiny):
    """`quantization:` says how uploads are encoded for any channel model; `channel.bits_per_param` (the spelling before
    quantization had its own section) is read as `quantization.bits_per_param`, and a disagreement is one clear error."""
    from fedsim.types import FedsimError

    old = tiny(channel={"kind": "awgn", "bits_per_param": 8, "rounding": "stochastic"})
    new = tiny(channel={"kind": "awgn"}, quantization={"bits_per_param": 8, "rounding": "stochastic"})
    assert old == new and old.quantization.bits_per_param == 8 and "bits_per_param" not in old.channel.model_dump()
    with pytest.raises(FedsimError, match="channel.bits_per_param and quantization.bits_per_param disagree"):
        tiny(channel={"bits_per_param": 8}, quantization={"bits_per_param": 4})


def test_compute_time_counts_the_examples_a_client_processed(tmp_path, tiny):
    """A shard smaller than a batch is the whole batch at each step: 2 steps of batch 64 on a client holding fewer
    than 64 examples cost 2 x its size in cycles, not 128."""
    from fedsim.runtime import get_runtime

    scenario = tiny(
        clients={"num_clients": 6, "per_round": 6},
        data={"partition": {"kind": "quantity_skew", "alpha": 0.3, "min_examples": 10}},
        train={"local_steps": 2, "batch_size": 64},
        channel={"compute": {"enabled": True, "cycles_per_sample": 1e8, "cpu_hz": 1e9}},
        rounds=1,
    )
    run_scenario(scenario, tmp_path / "run", progress=False)
    sizes = [len(p) for p in get_runtime(scenario).partitions]
    clients = read_rows(tmp_path / "run" / "clients.csv")
    assert min(sizes) < 64 < max(sizes)
    for c in clients:  # 1e8 cycles per example at 1 GHz: 0.1 s each
        assert float(c["compute_s"]) == pytest.approx(0.1 * 2 * min(64, sizes[int(c["client"])]))


def test_losses_and_aircomp_noise_shift_no_later_rounds_fading(tmp_path):
    """Seeds share channels: runs that differ only in HARQ resends (which draw a new fade per resend) or in the ranks an
    AirComp round superposes (one noise draw per entry) see the same fading in every round."""
    lossy = "channel={kind: rayleigh, snr_db: 0.0, bandwidth_hz: 1.0e+6, packet_error: average, per_m: 0.5, harq_retransmissions: %d}"
    air = "channel={kind: rayleigh, snr_db: 10.0, mode: aircomp}", "aggregation.method=fedavg-factors"
    runs = {
        "harq0": [lossy % 0],
        "harq3": [lossy % 3],
        "air-rank2": [*air, "policy={name: fixed, rank: 2}"],
        "air-rank8": [*air, "policy={name: fixed, rank: 8}"],
    }
    fades = {}
    for name, overrides in runs.items():
        run_scenario(load_scenario(QUICKSTART, [*FAST, *overrides]), tmp_path / name, progress=False)
        rows = read_rows(tmp_path / name / "clients.csv")
        fades[name] = [(r["round"], r["client"], r["fading_gain"]) for r in rows]
        if name == "harq3":
            assert sum(int(r["retransmissions"]) for r in rows) > 0  # the resends did draw
    assert fades["harq0"] == fades["harq3"]
    assert fades["air-rank2"] == fades["air-rank8"]


def test_a_client_the_deadline_stops_before_its_upload_is_charged_nothing(tmp_path):
    """Local training of 2 x 16 examples at 1e8 cycles each on a 1 GHz CPU takes 3.2 s, past the 1 s deadline."""
    compute = "channel={kind: awgn, snr_db: 10.0, deadline_s: 1.0, compute: {enabled: true, cycles_per_sample: 1.0e+8, cpu_hz: 1.0e+9}}"
    run_scenario(load_scenario(QUICKSTART, [*FAST, compute]), tmp_path / "run", progress=False)
    clients, rounds = read_rows(tmp_path / "run" / "clients.csv"), read_rows(tmp_path / "run" / "rounds.csv")
    assert clients and all(float(c["compute_s"]) > 1.0 and c["drop_reason"] == "deadline" for c in clients)
    for column in ("bytes_up", "bytes_up_adapter", "params_up", "packets", "latency_s"):
        assert {float(c[column]) for c in clients} == {0.0}, column
    assert all(float(r["uplink_latency_s"]) == 1.0 and int(r["bytes_up"]) == 0 for r in rounds)
