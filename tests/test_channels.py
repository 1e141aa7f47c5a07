"""Channel blocks against their closed forms (Monte Carlo, 10^5 seeded draws) and their exact properties."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import integrate, special

from channels import ChannelConfig, build_channel
from channels.aircomp import superpose
from channels.large_scale import GeometryConfig, distance_snr_db
from channels.packet_error import packet_error_rate
from channels.quantization import dequantize_payload, encoded_bits, expected_bytes, quantize_payload, quantize_tensor
from channels.rate import rayleigh_mean_rate, rayleigh_outage_probability
from fedsim.adapter_state import AdapterState
from fedsim.aggregation import aggregate

N = 100_000
IDS = np.arange(N)


def channel(**fields):
    return build_channel(ChannelConfig.model_validate(fields), seed=0)


def close(estimate: float, exact: float, standard_error: float) -> bool:
    """The acceptance rule: within 1 % relative or 3 standard errors."""
    return abs(estimate - exact) <= max(0.01 * abs(exact), 3.0 * standard_error)


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_rayleigh_mean_rate_matches_closed_form(snr_db):
    ch = channel(kind="rayleigh", snr_db=snr_db, bandwidth_hz=1e6, access="tdma")  # tdma: every client gets B
    rate = ch.draw(1, IDS, np.random.default_rng(1)).rate_bps
    exact = 1e6 * np.exp(10 ** (-snr_db / 10)) * special.exp1(10 ** (-snr_db / 10)) / np.log(2)
    assert exact == pytest.approx(rayleigh_mean_rate(1e6, snr_db))
    assert close(rate.mean(), exact, rate.std() / np.sqrt(N))


@pytest.mark.parametrize("snr_db, target", [(5.0, 1e6), (10.0, 2e6), (15.0, 1e6)])
def test_rayleigh_outage_matches_closed_form(snr_db, target):
    ch = channel(kind="rayleigh", snr_db=snr_db, bandwidth_hz=1e6, access="tdma", target_rate_bps=target)
    rng = np.random.default_rng(2)
    sent = ch.uplink(ch.draw(1, IDS, rng), np.full(N, 1000), rng)
    observed = np.mean([t.drop_reason == "outage" for t in sent])
    exact = 1 - np.exp(-(2 ** (target / 1e6) - 1) / 10 ** (snr_db / 10))
    assert exact == pytest.approx(rayleigh_outage_probability(target, 1e6, snr_db))
    assert close(observed, exact, np.sqrt(exact * (1 - exact) / N))


# --- packet errors and HARQ -------------------------------------------------------------------------

M = 0.023  # Chen et al.'s decoding threshold
PACKET = 12000


def _send(snr_db, bits, **fields):
    """Send N updates of `bits`; returns (lost fraction, packets resent per client, transmissions)."""
    ch = channel(snr_db=snr_db, access="tdma", packet_bits=PACKET, per_m=M, **fields)
    rng = np.random.default_rng(3)
    sent = ch.uplink(ch.draw(1, IDS, rng), np.full(N, bits), rng)
    lost = np.array([t.drop_reason == "packet-error" for t in sent])
    return lost.mean(), np.array([t.retransmissions for t in sent], dtype=float), sent


def _check_loss(observed, exact):
    assert close(observed, exact, np.sqrt(exact * (1 - exact) / N)), (observed, exact)


def _check_mean(values, exact):
    assert close(values.mean(), exact, values.std() / np.sqrt(N)), (values.mean(), exact)


SNRS = [-5.0, 0.0, 5.0]
HARQ_SNRS = [-15.0, -10.0, -5.0]  # low enough that a loss after two resends is not vanishingly rare


@pytest.mark.parametrize("snr_db", SNRS)
def test_threshold_rayleigh_loses_an_update_with_the_averaged_probability(snr_db):
    # Block fading: every packet sees the round's fade, so 10 packets are lost together: 1 - exp(-m / snr).
    lost, resent, _ = _send(snr_db, 10 * PACKET, kind="rayleigh", packet_error="threshold")
    _check_loss(lost, 1 - np.exp(-M / 10 ** (snr_db / 10)))
    assert not resent.any()


@pytest.mark.parametrize("snr_db", SNRS)
def test_average_model_is_chen_et_al_convention(snr_db):
    # AWGN rate fading: the loss comes only from the model's own Rayleigh fade at the mean SNR.
    lost, _, _ = _send(snr_db, 10 * PACKET, kind="awgn", packet_error="average")
    _check_loss(lost, 1 - np.exp(-M / 10 ** (snr_db / 10)))


@pytest.mark.parametrize("snr_db", SNRS)
def test_per_packet_fading_loses_one_of_n_packets(snr_db):
    n = 10
    lost, _, _ = _send(snr_db, n * PACKET, kind="rayleigh", packet_error="per-packet")
    _check_loss(lost, 1 - np.exp(-n * M / 10 ** (snr_db / 10)))


@pytest.mark.parametrize("snr_db", HARQ_SNRS)
def test_time_diversity_harq_resends_the_update_after_a_new_fade(snr_db):
    retries, packets = 2, 10
    p = 1 - np.exp(-M / 10 ** (snr_db / 10))
    for model, kind in (("threshold", "rayleigh"), ("average", "awgn")):
        lost, resent, sent = _send(snr_db, packets * PACKET, kind=kind, packet_error=model, harq_retransmissions=retries)
        _check_loss(lost, p ** (retries + 1))
        # Resend j happens iff the first j attempts failed; each resends all the packets.
        _check_mean(resent, packets * sum(p**j for j in range(1, retries + 1)))
        assert set(np.unique(resent)) <= {0, 10, 20}
    t = next(t for t in sent if t.retransmissions)  # AWGN (the last loop): rate B log2(1 + snr)
    assert t.latency_s == pytest.approx(packets * PACKET * (1 + t.retransmissions / packets) / np.log2(1 + 10 ** (snr_db / 10)) / 1e6)
    assert t.energy_j == pytest.approx(0.2 * t.latency_s)


@pytest.mark.parametrize("snr_db", HARQ_SNRS)
def test_chase_combining_adds_the_snrs_of_one_fade(snr_db):
    retries, packets, snr = 2, 10, 10 ** (snr_db / 10)
    lost, resent, _ = _send(snr_db, packets * PACKET, kind="rayleigh", packet_error="threshold", harq="chase", harq_retransmissions=retries)
    _check_loss(lost, 1 - np.exp(-M / ((retries + 1) * snr)))
    # Resend j happens iff j combined copies were not enough: j * snr * g < m.
    _check_mean(resent, packets * sum(1 - np.exp(-M / (j * snr)) for j in range(1, retries + 1)))


@pytest.mark.parametrize("snr_db", HARQ_SNRS)
def test_per_packet_harq_resends_each_lost_packet(snr_db):
    retries, n, snr = 2, 10, 10 ** (snr_db / 10)
    p = 1 - np.exp(-M / snr)
    lost, resent, _ = _send(snr_db, n * PACKET, kind="rayleigh", packet_error="per-packet", harq_retransmissions=retries)
    _check_loss(lost, 1 - (1 - p ** (retries + 1)) ** n)
    _check_mean(resent, n * sum(p**j for j in range(1, retries + 1)))
    lost, resent, _ = _send(snr_db, n * PACKET, kind="rayleigh", packet_error="per-packet", harq="chase", harq_retransmissions=retries)
    _check_loss(lost, 1 - np.exp(-n * M / ((retries + 1) * snr)))
    _check_mean(resent, n * sum(1 - np.exp(-M / (j * snr)) for j in range(1, retries + 1)))


def test_minilm_update_at_5_db_is_lost_07_percent_not_86():
    bits, snr = 275 * PACKET, 10**0.5  # a MiniLM-sized update (~3.3 Mbit) in 275 packets
    lost, _, _ = _send(5.0, bits, kind="rayleigh", packet_error="threshold")
    exact = 1 - np.exp(-M / snr)
    assert exact == pytest.approx(0.00725, abs=5e-5)
    _check_loss(lost, exact)
    # The old code applied the Rayleigh-averaged PER to the faded SNR, per packet: E_g[1 - exp(-275 m / (snr g))].
    a = 275 * M / snr
    old = 1 - 2 * np.sqrt(a) * special.k1(2 * np.sqrt(a))
    assert old == pytest.approx(1 - integrate.quad(lambda g: np.exp(-a / g - g), 0, np.inf)[0], rel=1e-6)
    assert old == pytest.approx(0.86, abs=0.01)


def test_packet_error_rate_is_the_rayleigh_average():
    snr = 10 ** (np.array(SNRS) / 10)
    assert np.allclose(packet_error_rate(snr, M), 1 - np.exp(-M / snr))


@pytest.mark.parametrize("k_factor", [0.0, 5.0])
def test_fading_cdf_matches_the_draws(k_factor):
    ch = channel(kind="rician", k_factor=k_factor)
    gain = ch.draw(1, IDS, np.random.default_rng(8)).fading_gain
    for x in (0.05, 0.3, 1.0):
        exact = float(ch.fading.cdf(x))
        _check_loss(np.mean(gain < x), exact)
    assert channel(kind="rayleigh").fading.cdf(0.3) == pytest.approx(1 - np.exp(-0.3))
    assert list(channel(kind="awgn").fading.cdf(np.array([0.5, 2.0]))) == [0.0, 1.0]


def test_per_packet_rician_and_awgn():
    snr_db, n = -10.0, 4
    k = channel(kind="rician", k_factor=5.0).fading
    lost, _, _ = _send(snr_db, n * PACKET, kind="rician", k_factor=5.0, packet_error="per-packet")
    _check_loss(lost, 1 - (1 - float(k.cdf(M / 10 ** (snr_db / 10)))) ** n)
    # AWGN is deterministic: lost iff snr < m (-16.4 dB).
    assert _send(-16.0, PACKET, kind="awgn", packet_error="per-packet")[0] == 0.0
    assert _send(-17.0, PACKET, kind="awgn", packet_error="per-packet", harq_retransmissions=3)[0] == 1.0
    assert _send(-17.0, PACKET, kind="awgn", packet_error="threshold", harq="chase", harq_retransmissions=1)[0] == 0.0  # 2 copies: -14 dB


def test_packet_error_config_names_a_model():
    assert ChannelConfig.model_validate({"packet_error": False}).packet_error == "none"
    assert ChannelConfig().packet_error == "none" and ChannelConfig().harq == "time-diversity"
    with pytest.raises(ValueError, match=r"pick one of average\|threshold\|per-packet"):
        ChannelConfig.model_validate({"packet_error": True})
    with pytest.raises(ValueError):
        ChannelConfig.model_validate({"packet_error": "sometimes"})


def test_outage_is_blamed_first_and_resends_nothing():
    # Outage below 2^(R0/B) - 1 = 0.007, packet error between that and m = 0.023.
    ch = channel(kind="rayleigh", snr_db=-5.0, access="tdma", target_rate_bps=1e4, packet_error="threshold", harq_retransmissions=2)
    rng = np.random.default_rng(0)
    sent = ch.uplink(ch.draw(1, IDS[:5000], rng), np.full(5000, 10 * PACKET), rng)
    reasons = [t.drop_reason for t in sent]
    assert {"outage", "packet-error", ""} <= set(reasons)
    assert all(t.retransmissions == 0 for t in sent if t.drop_reason == "outage")


@pytest.mark.parametrize("k_factor", [0.0, 1.0, 5.0, 20.0])
def test_rician_mean_gain_is_one(k_factor):
    gain = channel(kind="rician", k_factor=k_factor).draw(1, IDS, np.random.default_rng(4)).fading_gain
    assert close(gain.mean(), 1.0, gain.std() / np.sqrt(N))
    if k_factor > 0:  # a stronger line of sight fluctuates less
        assert gain.var() < 1.0


def test_gauss_markov_fading_is_correlated_across_rounds():
    ch = channel(kind="rayleigh", correlation=0.9)
    rng = np.random.default_rng(5)
    g1 = ch.draw(1, IDS, rng).fading_gain
    g2 = ch.draw(2, IDS, rng).fading_gain
    g4 = ch.draw(4, IDS, rng).fading_gain  # two rounds later: rho^2
    assert np.corrcoef(g1, g2)[0, 1] == pytest.approx(0.9**2, abs=0.01)  # corr(|h1|^2, |h2|^2) = rho^2
    assert np.corrcoef(g2, g4)[0, 1] == pytest.approx(0.9**4, abs=0.01)
    assert close(g2.mean(), 1.0, g2.std() / np.sqrt(N))
    independent = channel(kind="rayleigh").draw(1, IDS, rng).fading_gain
    assert abs(np.corrcoef(g1, independent)[0, 1]) < 0.01


def test_rician_line_of_sight_phase_is_fixed_when_fading_is_correlated():
    k, rho = 5.0, 0.9
    ch = channel(kind="rician", k_factor=k, correlation=rho)
    rng = np.random.default_rng(6)
    g1 = ch.draw(1, IDS, rng).fading_gain
    g2 = ch.draw(2, IDS, rng).fading_gain
    sigma2, mu2 = 1 / (k + 1), k / (k + 1)
    exact = (2 * sigma2 * mu2 * rho + sigma2**2 * rho**2) / (2 * sigma2 * mu2 + sigma2**2)
    assert exact == pytest.approx(0.8918, abs=1e-4)
    batches = [np.corrcoef(a, b)[0, 1] for a, b in zip(np.split(g1, 50), np.split(g2, 50))]
    assert close(np.corrcoef(g1, g2)[0, 1], exact, np.std(batches) / np.sqrt(50))
    assert close(g2.mean(), 1.0, g2.std() / np.sqrt(N))
    # Deterministic per seed, and the same phase whatever order the clients come in.
    again = channel(kind="rician", k_factor=k, correlation=rho)
    rng = np.random.default_rng(6)
    assert np.array_equal(again.draw(1, IDS, rng).fading_gain, g1)
    assert ch.fading._phase[7] == again.fading._phase[7]


def test_independent_rician_draws_are_unchanged():
    # correlation = 0 keeps the historical draw order (scatter, then a fresh phase), so old ledgers replay.
    k, rng = 5.0, np.random.default_rng(11)
    gain = channel(kind="rician", k_factor=k).draw(1, IDS[:100], rng).fading_gain
    rng = np.random.default_rng(11)
    w = (rng.standard_normal(100) + 1j * rng.standard_normal(100)) / np.sqrt(2)
    h = np.sqrt(k / (k + 1)) * np.exp(1j * rng.uniform(0, 2 * np.pi, 100)) + np.sqrt(1 / (k + 1)) * w
    assert np.array_equal(gain, np.abs(h) ** 2)


def test_path_loss_difference_is_exact():
    geometry = GeometryConfig(path_loss_exponent=3.7, shadowing_db=0.0)
    d1, d2 = 35.0, 410.0
    snr1, snr2 = distance_snr_db(np.array([d1, d2]), 0.2, 1e5, geometry)
    assert snr1 - snr2 == pytest.approx(10 * 3.7 * np.log10(d2 / d1), abs=1e-9)
    # Through the channel: placed clients, same band, shadowing off.
    ch = channel(large_scale="distance", geometry={"path_loss_exponent": 3.7, "shadowing_db": 0.0}, access="tdma")
    states = ch.draw(1, np.arange(50), np.random.default_rng(0))
    d = states.extra["distance_m"]
    assert np.all((d >= 10) & (d <= 500))
    diff = states.snr_db[:, None] - states.snr_db[None, :]
    assert np.allclose(diff, 10 * 3.7 * np.log10(d[None, :] / d[:, None]), atol=1e-9)
    # The thermal noise floor: -174 dBm/Hz + NF over the band, 23 dBm transmit power.
    pl = 40 + 10 * 3.7 * np.log10(d[0])
    assert states.snr_db[0] == pytest.approx(10 * np.log10(200) - pl - (-174 + 10 * np.log10(1e6) + 7.0))


def test_placement_is_seeded_and_fixed_for_the_run():
    cfg = ChannelConfig.model_validate({"large_scale": "distance"})
    a, b = build_channel(cfg, seed=1), build_channel(cfg, seed=1)
    rng = np.random.default_rng(0)
    first = a.draw(1, np.array([3, 7]), rng).extra["distance_m"]
    again = a.draw(9, np.array([7, 3]), rng).extra["distance_m"]
    assert np.array_equal(first, again[::-1])
    assert np.array_equal(first, b.draw(1, np.array([3, 7]), rng).extra["distance_m"])
    assert not np.array_equal(first, build_channel(cfg, seed=2).draw(1, np.array([3, 7]), rng).extra["distance_m"])


def test_per_client_snr_distributions():
    uniform = channel(large_scale="uniform", snr_db=10, snr_spread_db=5).draw(1, IDS, np.random.default_rng(0)).snr_db
    assert uniform.min() >= 5 and uniform.max() <= 15 and close(uniform.mean(), 10, uniform.std() / np.sqrt(N))
    normal = channel(large_scale="normal", snr_db=10, snr_spread_db=3).draw(1, IDS[:20000], np.random.default_rng(0)).snr_db
    assert normal.std() == pytest.approx(3, rel=0.03)


# --- quantisation -------------------------------------------------------------------------------


def test_nearest_rounding_error_is_within_half_a_step():
    x = np.random.default_rng(0).standard_normal((64, 33)).astype(np.float32)
    for bits in (16, 8, 4):
        codes, scale = quantize_tensor(x, bits, "nearest", None)
        back = dequantize_payload({"t": codes, "t/scale": scale}, bits, {"t": x.shape})["t"]
        assert scale[0] == pytest.approx(np.abs(x).max() / (2 ** (bits - 1) - 1))
        assert np.abs(back - x).max() <= scale[0] / 2 * (1 + 1e-5)
        assert np.abs(back - x).max() > 0  # the error is real


def test_stochastic_rounding_is_unbiased():
    x = np.random.default_rng(1).uniform(-1, 1, 200).astype(np.float32)
    rng = np.random.default_rng(2)
    draws = 4000
    total = np.zeros_like(x, dtype=np.float64)
    for _ in range(draws):
        codes, scale = quantize_tensor(x, 8, "stochastic", rng)
        total += dequantize_payload({"t": codes, "t/scale": scale}, 8, {"t": x.shape})["t"]
    step = np.abs(x).max() / 127
    mean_error = total / draws - x
    assert np.abs(mean_error).max() < 4 * (step / 2) / np.sqrt(draws)  # each draw errs < step, sd <= step/2
    codes, scale = quantize_tensor(x, 8, "nearest", None)
    nearest_bias = np.abs(dequantize_payload({"t": codes, "t/scale": scale}, 8, {"t": x.shape})["t"] - x).mean()
    assert np.abs(mean_error).mean() < nearest_bias / 5


@pytest.mark.parametrize("bits", [32, 16, 8, 4])
def test_quantised_bytes_are_exact(bits):
    rng = np.random.default_rng(0)
    shapes = {"A.0": (3, 31), "B.0": (31, 3), "head.weight": (7, 31), "head.bias": (7,)}
    payload = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    encoded = quantize_payload(payload, bits, "stochastic", rng)
    n = {k: int(np.prod(s)) for k, s in shapes.items()}
    exact = 4 * sum(n.values()) if bits == 32 else sum((v * bits + 7) // 8 + 4 for v in n.values())
    assert encoded_bits(encoded) == 8 * exact == 8 * expected_bytes(shapes, bits)
    decoded = dequantize_payload(encoded, bits, shapes)
    assert {k: v.shape for k, v in decoded.items()} == shapes
    assert all(v.dtype == np.float32 for v in decoded.values())
    if bits == 32:
        assert all(np.array_equal(decoded[k], payload[k]) for k in shapes)


# --- AirComp --------------------------------------------------------------------------------


def _client_updates(rng, ranks_per_client, in_dim=12, out_dim=10, max_rank=4, classes=5):
    updates = []
    for ranks in ranks_per_client:
        u = {"head.weight": rng.standard_normal((classes, in_dim)).astype(np.float32), "head.bias": rng.standard_normal(classes).astype(np.float32)}
        for i, r in enumerate(ranks):
            if r:
                u[f"A.{i}"] = rng.standard_normal((r, in_dim)).astype(np.float32)
                u[f"B.{i}"] = rng.standard_normal((out_dim, r)).astype(np.float32)
        updates.append(u)
    shapes = {"head.weight": (classes, in_dim), "head.bias": (classes,)}
    for i in range(len(ranks_per_client[0])):
        shapes[f"A.{i}"], shapes[f"B.{i}"] = (max_rank, in_dim), (out_dim, max_rank)
    glob = AdapterState(
        A=[rng.standard_normal((max_rank, in_dim)).astype(np.float32) for _ in ranks_per_client[0]],
        B=[rng.standard_normal((out_dim, max_rank)).astype(np.float32) for _ in ranks_per_client[0]],
        head={k: np.zeros(s, dtype=np.float32) for k, s in shapes.items() if k.startswith("head")},
    )
    return updates, shapes, glob


def test_aircomp_without_noise_equals_digital_fedavg():
    rng = np.random.default_rng(0)
    updates, shapes, glob = _client_updates(rng, [[4, 2, 0], [1, 3, 0], [4, 4, 0]])
    weights = np.array([10.0, 30.0, 60.0])
    ch = channel(mode="aircomp", kind="awgn", snr_db=0.0, aircomp={"noise": False})
    states = ch.draw(1, np.arange(3), rng)
    sent, result = ch.superpose(updates, weights, states, rng, shapes)
    assert all(t.delivered for t in sent) and result.mse == 0.0
    digital, _, _ = aggregate(glob, updates, list(weights), "fedavg-factors", rng, average="models")
    for i in range(2):
        assert np.allclose(result.aggregate[f"A.{i}"], digital.A[i], atol=1e-6)
        assert np.allclose(result.aggregate[f"B.{i}"], digital.B[i], atol=1e-6)
    assert "A.2" not in result.aggregate  # nobody sent layer 2: the server keeps its own
    for key in ("head.weight", "head.bias"):
        assert np.allclose(result.aggregate[key], digital.head[key], atol=1e-6)
    # One slot for everyone, whatever the number of clients: ceil(D/2) complex symbols over B, D the entries on the
    # air: layers 0 and 1 at the largest sender rank, 4 (layer 2, which nobody trained, is not sent), and the head.
    symbols = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(".2"))
    assert {t.latency_s for t in sent} == {np.ceil(symbols / 2) / 1e6}


def test_aircomp_puts_on_the_air_only_what_the_senders_ranks_span():
    # Every sender at rank 2 of max_rank 4: rows 2-3 of A and columns 2-3 of B are not sent, so they get no noise
    # (the digital fedavg-factors leaves them to the server too), and the slot is that of rank 2, not of max_rank.
    rng = np.random.default_rng(3)
    updates, shapes, glob = _client_updates(rng, [[2, 1], [2, 1], [1, 1]])
    ch = channel(mode="aircomp", kind="awgn", snr_db=0.0)
    states = ch.draw(1, np.arange(3), rng)
    sent, result = ch.superpose(updates, np.ones(3), states, rng, shapes)
    assert np.all(result.aggregate["A.0"][2:] == 0) and np.all(result.aggregate["B.0"][:, 2:] == 0)
    assert np.all(result.aggregate["A.1"][1:] == 0) and np.all(result.aggregate["B.1"][:, 1:] == 0)
    assert np.all(result.aggregate["A.0"][:2] != 0)  # the carried entries are received with noise
    in_dim, out_dim = shapes["A.0"][1], shapes["B.0"][0]
    entries = (2 + 1) * (in_dim + out_dim) + int(np.prod(shapes["head.weight"])) + int(np.prod(shapes["head.bias"]))
    assert {t.latency_s for t in sent} == {np.ceil(entries / 2) / 1e6}
    # The noise MSE is per entry on the air: 1/c^2 with c^2 = min gamma_k / (w_k^2 m_k), m_k over those entries.
    x = [np.concatenate([np.ravel(v) for v in u.values()]) for u in updates]
    c2 = min(1.0 / ((1 / 3) ** 2 * float(np.sum(v * v)) / entries) for v in x)
    assert result.scale**2 == pytest.approx(c2)
    # A truncated client's higher rank widens nothing: only the senders' spans are on the air.
    high = [dict(u) for u in updates] + [_client_updates(rng, [[4, 4]])[0][0]]
    states = ch.draw(1, np.arange(4), rng)
    states.fading_gain[:] = [1.0, 1.0, 1.0, 0.01]
    sent, _ = channel(mode="aircomp", kind="rayleigh", snr_db=0.0).superpose(high, np.ones(4), states, rng, shapes)
    assert sent[3].drop_reason == "aircomp-truncated" and {t.latency_s for t in sent[:3]} == {np.ceil(entries / 2) / 1e6}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"packet_error": "threshold"}, "packet_error=threshold is a digital-uplink setting that mode=aircomp does not model"),
        ({"target_rate_bps": 1e5}, "target_rate_bps=100000.0 is a digital-uplink setting"),
        ({"harq_retransmissions": 2}, "allowed with mode=aircomp: harq_retransmissions: 0"),
        ({"snr_gap_db": 3.0}, "snr_gap_db=3.0 is a digital-uplink setting"),
        ({"access": "tdma"}, "allowed with mode=aircomp: access: fdma-equal"),
        ({"preset": "harsh"}, "packet_error=threshold (from preset harsh) is a digital-uplink setting"),
    ],
)
def test_aircomp_refuses_the_digital_uplinks_settings(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ChannelConfig.model_validate({"mode": "aircomp", **fields})
    ChannelConfig.model_validate(fields)  # fine on a digital uplink
    ChannelConfig.model_validate({"mode": "aircomp", "preset": "harsh", "packet_error": "none", "target_rate_bps": None})


def test_aircomp_mse_grows_as_snr_falls():
    updates, shapes, _ = _client_updates(np.random.default_rng(0), [[4, 4], [2, 4], [4, 1], [3, 3]])
    weights = np.ones(4)
    mses = []
    for snr_db in range(-10, 31, 5):
        ch = channel(mode="aircomp", kind="rayleigh", snr_db=float(snr_db), aircomp={"gain_threshold": 0.05})
        rng = np.random.default_rng(7)
        states = ch.draw(1, np.arange(4), rng)
        _, result = ch.superpose(updates, weights, states, rng, shapes)
        mses.append(result.mse_noise)
    assert all(a > b for a, b in zip(mses, mses[1:])), mses
    assert mses[0] / mses[-1] == pytest.approx(10**4, rel=1e-6)  # noise MSE = 1/c^2: exactly 1/SNR


def _equal_power(rng, k, shape, power):
    """k updates of one tensor `shape`, each with mean entry power exactly `power`."""
    out = []
    for _ in range(k):
        x = rng.standard_normal(shape)
        out.append({"head.weight": x * np.sqrt(power / np.mean(x * x))})
    return out


AIR_SHAPE = {"head.weight": (100, 1000)}  # D = 10^5 entries: 10^5 noise draws per round


@pytest.mark.parametrize("k", [1, 3, 10])
def test_aircomp_noise_mse_matches_truncated_channel_inversion(k):
    # K equal-weight senders of power m: MSE = m / (K^2 gamma_min) (Zhu et al.: sigma^2 / (K^2 rho_0)).
    rng = np.random.default_rng(k)
    m = 2.0
    updates = _equal_power(rng, k, AIR_SHAPE["head.weight"], m)
    ch = channel(mode="aircomp", kind="rayleigh", snr_db=10.0, aircomp={"gain_threshold": 0.0})
    states = ch.draw(1, np.arange(k), rng)
    sent, result = ch.superpose(updates, np.ones(k), states, rng, AIR_SHAPE)
    gamma = 10.0 * states.fading_gain
    exact = m / (k**2 * gamma.min())
    d = 10**5
    assert close(result.mse_noise, exact, exact * np.sqrt(2 / d)), (result.mse_noise, exact)
    assert result.mse_truncation == 0.0 and result.mse == result.mse_noise
    # Power: p_k = P_max c^2 w^2 m / gamma_k = P_max gamma_min / gamma_k; the weakest (binding) sender uses P_max.
    slot = np.ceil(d / 2) / 1e6
    assert [t.energy_j for t in sent] == pytest.approx(list(0.2 * gamma.min() / gamma * slot))
    assert max(t.energy_j for t in sent) == pytest.approx(0.2 * slot)


def test_aircomp_unequal_weights_noise_is_one_over_c_squared():
    rng = np.random.default_rng(4)
    shape = AIR_SHAPE["head.weight"]
    updates = [_equal_power(rng, 1, shape, m)[0] for m in (1.0, 4.0, 0.5)]
    weights = np.array([10.0, 20.0, 70.0])
    ch = channel(mode="aircomp", kind="awgn", large_scale="levels", snr_levels_db=[0.0, 10.0, 20.0])
    states = ch.draw(1, np.arange(3), rng)
    gamma = 10 ** (states.snr_db / 10)
    w, m = weights / weights.sum(), np.array([1.0, 4.0, 0.5])
    c2 = np.min(gamma / (w**2 * m))
    sent, result = ch.superpose(updates, weights, states, rng, AIR_SHAPE)
    assert result.scale**2 == pytest.approx(c2)
    assert close(result.mse_noise, 1 / c2, np.sqrt(2 / 10**5) / c2), (result.mse_noise, 1 / c2)
    power = 0.2 * c2 * w**2 * m / gamma
    assert power.max() == pytest.approx(0.2)  # the binding sender (not necessarily the weakest channel) uses P_max
    assert [t.energy_j for t in sent] == pytest.approx(list(power * sent[0].latency_s))


def test_aircomp_reports_the_truncation_bias():
    rng = np.random.default_rng(1)
    shape = (20, 50)
    updates = [{"head.weight": rng.standard_normal(shape)} for _ in range(4)]
    updates[0]["head.weight"] += 5.0  # the truncated client's update is very different
    ch = channel(mode="aircomp", kind="rayleigh", snr_db=10.0, aircomp={"gain_threshold": 0.5})
    states = ch.draw(1, np.arange(4), rng)
    states.fading_gain[:] = [0.1, 2.0, 0.6, 1.0]
    weights = np.array([1.0, 2.0, 3.0, 4.0])
    x = np.array([u["head.weight"] for u in updates])
    everyone = np.tensordot(weights / weights.sum(), x, 1)
    senders = np.tensordot(weights[1:] / weights[1:].sum(), x[1:], 1)
    truncation = np.mean((senders - everyone) ** 2)
    sent, result = ch.superpose(updates, weights, states, rng, {"head.weight": shape})
    assert [t.drop_reason for t in sent] == ["aircomp-truncated", "", "", ""]
    assert sent[0].energy_j == 0.0
    assert result.mse_truncation == pytest.approx(truncation) and truncation > 0.2  # about (0.1 x 5)^2
    # The parts add up in expectation (the cross term has mean zero): Monte Carlo over the noise.
    gaps = []
    for seed in range(400):
        _, r = ch.superpose(updates, weights, states, np.random.default_rng(seed), {"head.weight": shape})
        gaps.append(r.mse - r.mse_noise - r.mse_truncation)
    assert abs(np.mean(gaps)) <= 3 * np.std(gaps) / np.sqrt(len(gaps))
    assert r.mse_noise > 0
    # Without noise the error is exactly the truncation bias.
    quiet = channel(mode="aircomp", kind="rayleigh", snr_db=10.0, aircomp={"gain_threshold": 0.5, "noise": False})
    _, r = quiet.superpose(updates, weights, states, rng, {"head.weight": shape})
    assert r.mse_noise == 0.0 and r.mse == r.mse_truncation == pytest.approx(truncation)


def test_aircomp_truncates_deep_fades():
    rng = np.random.default_rng(1)
    updates, shapes, _ = _client_updates(rng, [[2]] * 4)
    ch = channel(mode="aircomp", kind="rayleigh", snr_db=10.0, aircomp={"gain_threshold": 0.5})
    states = ch.draw(1, np.arange(4), rng)
    states.fading_gain[:] = [0.1, 2.0, 0.6, 1.0]
    sent, result = ch.superpose(updates, np.ones(4), states, rng, shapes)
    assert [t.drop_reason for t in sent] == ["aircomp-truncated", "", "", ""]
    assert list(result.senders) == [False, True, True, True]
    d = sum(int(np.prod(s)) for s in shapes.values())
    m = np.array([sum(float(np.sum(v.astype(float) ** 2)) for v in u.values()) / d for u in updates[1:]])
    gamma = 10.0 * np.array([2.0, 0.6, 1.0])
    c2 = np.min(gamma / (m / 9))
    assert [t.energy_j for t in sent] == pytest.approx([0.0] + list(0.2 * c2 * (m / 9) / gamma * sent[1].latency_s))
    assert max(t.energy_j for t in sent) == pytest.approx(0.2 * sent[1].latency_s)


def test_superpose_function_rejects_no_senders():
    updates, shapes, _ = _client_updates(np.random.default_rng(0), [[1]])
    result = superpose(updates, np.ones(1), np.zeros(1), np.ones(1), np.zeros(1, bool), shapes, True, np.random.default_rng(0))
    assert result.aggregate == {} and np.isnan(result.mse)


# --- access, losses, cost -------------------------------------------------------------------------


def test_tdma_slots_go_in_an_order_drawn_each_round_and_the_upload_follows_it():
    """The slot order is a fresh uniform permutation per round (3,000 rounds of 3 clients: each is first 1,000 times
    in expectation, sd 25.8; within 4.5 sd), and the uplink times the slots in it: the first slot starts when its
    client's training ends, each later one when the previous ends, and the round ends with the last."""
    ch = channel(snr_db=10.0, bandwidth_hz=1e6, access="tdma", compute={"enabled": True, "cycles_per_sample": 1e7, "cpu_hz": 1e9, "speed_sigma": 0.5})
    rng = np.random.default_rng(0)
    first = np.zeros(3, dtype=int)
    for round_ in range(1, 3001):
        states = ch.draw(round_, np.arange(3), rng)
        first[np.argmin(states.slot)] += 1
        assert sorted(states.slot) == [0, 1, 2]
    assert np.all(np.abs(first - 1000) < 117), first
    samples, bits = np.array([64, 32, 16]), np.array([4e5, 2e5, 1e5])
    sent = ch.uplink(states, bits, rng, samples)
    order = np.argsort(states.slot)
    end = 0.0
    for k in order:
        assert sent[k].start_s == pytest.approx(max(end, sent[k].compute_s))
        end = sent[k].start_s + sent[k].latency_s
    assert ch.round_latency(sent) == pytest.approx(end)
    fdma = channel(snr_db=10.0, access="fdma-equal").draw(1, np.arange(3), rng)
    assert fdma.slot is None


def test_fdma_round_latency_is_max_and_tdma_is_sum():
    bits = np.array([1e5, 2e5, 4e5])
    fdma = channel(snr_db=10.0, bandwidth_hz=3e6)
    states = fdma.draw(1, np.arange(3), np.random.default_rng(0))
    assert np.allclose(states.bandwidth_hz, 1e6)
    sent = fdma.uplink(states, bits, np.random.default_rng(0))
    assert [t.latency_s for t in sent] == pytest.approx(list(bits / (1e6 * np.log2(11))))
    assert fdma.round_latency(sent) == pytest.approx(4e5 / (1e6 * np.log2(11)))
    tdma = channel(snr_db=10.0, bandwidth_hz=3e6, access="tdma")
    sent = tdma.uplink(tdma.draw(1, np.arange(3), np.random.default_rng(0)), bits, np.random.default_rng(0))
    assert tdma.round_latency(sent) == pytest.approx(bits.sum() / (3e6 * np.log2(11)))
    assert sent[0].energy_j == pytest.approx(0.2 * sent[0].latency_s)


def test_proportional_fdma_shares_by_data_size():
    ch = channel(access="fdma-proportional", bandwidth_hz=1e6)
    ch.set_data_sizes([100, 300, 600, 50])
    states = ch.draw(1, np.array([0, 1, 2]), np.random.default_rng(0))
    assert np.allclose(states.bandwidth_hz, [1e5, 3e5, 6e5])


def test_snr_gap_lowers_the_rate():
    rate = channel(snr_db=10.0, snr_gap_db=3.0, access="tdma").draw(1, np.arange(1), np.random.default_rng(0)).rate_bps[0]
    assert rate == pytest.approx(1e6 * np.log2(1 + 10 / 10**0.3))


def test_deadline_drops_late_uploads_and_cuts_their_airtime():
    ch = channel(snr_db=10.0, bandwidth_hz=1e6, access="tdma", deadline_s=1.0, compute={"enabled": True, "cycles_per_sample": 1e7, "cpu_hz": 1e9})
    assert ch.deadline_s == 1.0
    rate = 1e6 * np.log2(11)
    bits = np.array([0.3, 0.3, 0.3]) * rate  # 0.3 s each, after 0.16 s of computation (16 samples)
    states = ch.draw(1, np.arange(3), np.random.default_rng(0))
    sent = ch.uplink(states, bits, np.random.default_rng(0), samples=np.full(3, 16))
    last = int(np.argmax(states.slot))  # the third slot
    assert [t.drop_reason for t in sent] == ["deadline" if k == last else "" for k in range(3)]
    first = int(np.argmin(states.slot))
    assert sent[first].compute_s == pytest.approx(0.16) and sent[first].start_s == pytest.approx(0.16)
    assert sent[last].latency_s == pytest.approx(1.0 - 0.16 - 0.6)
    assert sent[first].compute_energy_j == pytest.approx(1e-28 * 16e7 * 1e9**2)
    assert sent[first].energy_j == pytest.approx(0.2 * 0.3 + sent[first].compute_energy_j)
    assert ch.round_latency(sent) == pytest.approx(1.0)
    assert channel().deadline_s == np.inf


def test_an_upload_the_deadline_stops_before_it_begins_puts_nothing_on_the_air_and_the_round_ends_at_the_deadline():
    """TDMA: the third 0.5 s slot would start at 1.16 s, after the 1 s deadline; FDMA: 16 samples take 1.6 s to train."""
    tdma = channel(snr_db=10.0, bandwidth_hz=1e6, access="tdma", deadline_s=1.0, compute={"enabled": True, "cycles_per_sample": 1e7, "cpu_hz": 1e9})
    bits = np.full(3, 0.5 * 1e6 * np.log2(11))
    states = tdma.draw(1, np.arange(3), np.random.default_rng(0))
    sent = tdma.uplink(states, bits, np.random.default_rng(0), samples=np.full(3, 16))
    last = int(np.argmax(states.slot))
    assert sent[last].start_s == pytest.approx(1.16) and sent[last].latency_s == 0.0
    assert (sent[last].n_bits, sent[last].packets, sent[last].drop_reason) == (0, 0, "deadline")
    assert [t.n_bits for k, t in enumerate(sent) if k != last] == [int(bits[0])] * 2  # the one cut mid-upload is charged in full
    assert tdma.round_latency(sent) == 1.0  # not 1.16: the server stops listening at the deadline
    fdma = channel(snr_db=10.0, bandwidth_hz=1e6, deadline_s=1.0, compute={"enabled": True, "cycles_per_sample": 1e8, "cpu_hz": 1e9})
    sent = fdma.uplink(fdma.draw(1, np.arange(2), np.random.default_rng(0)), np.full(2, 1e4), np.random.default_rng(0), samples=np.full(2, 16))
    assert [(t.compute_s, t.n_bits, t.packets, t.drop_reason) for t in sent] == [(pytest.approx(1.6), 0, 0, "deadline")] * 2
    assert fdma.round_latency(sent) == 1.0


def test_presets_ideal_never_drops_and_harsh_does():
    rng = np.random.default_rng(0)
    bits = np.full(2000, 150000)
    ideal = build_channel(ChannelConfig.model_validate({"preset": "ideal"}))
    assert all(t.delivered for t in ideal.uplink(ideal.draw(1, np.arange(2000), rng), bits, rng))
    harsh_cfg = ChannelConfig.model_validate({"preset": "harsh", "snr_db": 6.0, "access": "tdma"})
    assert (harsh_cfg.kind, harsh_cfg.snr_db, harsh_cfg.packet_error) == ("rayleigh", 6.0, "threshold")
    harsh = build_channel(harsh_cfg)
    reasons = {t.drop_reason for t in harsh.uplink(harsh.draw(1, np.arange(2000), rng), bits, rng)}
    assert "outage" in reasons
    # Block fading: a decoding error needs SNR < m = 0.023, which the preset's outage threshold
    # (2^(R0/B) - 1 = 0.072 at the full band) already covers; without a target rate they show.
    assert "packet-error" not in reasons
    no_target = build_channel(ChannelConfig.model_validate({"preset": "harsh", "snr_db": 6.0, "access": "tdma", "target_rate_bps": None}))
    assert "packet-error" in {t.drop_reason for t in no_target.uplink(no_target.draw(1, np.arange(2000), rng), bits, rng)}
    moderate = ChannelConfig.model_validate({"preset": "moderate"})
    assert (moderate.kind, moderate.k_factor, moderate.snr_db) == ("rician", 5.0, 20.0)
    # The resolved config (preset + every field) loads back to itself.
    assert ChannelConfig.model_validate(harsh_cfg.model_dump()) == harsh_cfg


def test_same_seed_same_draws():
    def run():
        ch = build_channel(ChannelConfig.model_validate({"preset": "harsh", "large_scale": "distance", "correlation": 0.5}), seed=4)
        rng = np.random.default_rng(9)
        out = []
        for r in range(1, 4):
            s = ch.draw(r, np.array([1, 4, 6]), rng)
            out.append((s.snr_db, s.fading_gain, [t.drop_reason for t in ch.uplink(s, np.full(3, 50000), rng)]))
        return repr(out)

    assert run() == run()


def test_snr_levels_give_each_client_one_of_the_levels_equally_often():
    levels = [-8.0, 2.0, 20.0]
    ch = channel(large_scale="levels", snr_levels_db=levels)
    ids = np.arange(3000)
    snr = ch.draw(1, ids, np.random.default_rng(0)).snr_db
    assert set(np.unique(snr)) == set(levels)
    shares = np.array([np.mean(snr == level) for level in levels])
    assert np.all(np.abs(shares - 1 / 3) < 0.03), shares
    again = channel(large_scale="levels", snr_levels_db=levels).draw(5, ids[::7], np.random.default_rng(1)).snr_db
    np.testing.assert_array_equal(again, snr[::7])  # fixed per client, whatever the round
    with pytest.raises(ValueError, match="snr_levels_db"):
        ChannelConfig(large_scale="levels")


def test_a_client_with_nothing_to_send_puts_no_packet_on_the_air():
    """A no-reply client (0 bits) at an SNR where HARQ resends most updates: no packet, no resend, no airtime."""
    ch = channel(kind="rayleigh", snr_db=-15.0, packet_error="threshold", harq_retransmissions=3)
    rng = np.random.default_rng(0)
    bits = np.zeros(len(IDS))
    bits[::2] = 1e5
    sent = ch.uplink(ch.draw(1, IDS, rng), bits, rng)
    silent = [t for t, b in zip(sent, bits) if b == 0]
    assert sum(t.packets + t.retransmissions for t in silent) == 0 and sum(t.latency_s for t in silent) == 0.0
    assert sum(t.retransmissions for t in sent) > 0  # the senders beside them did resend


def test_an_upload_cut_off_at_the_deadline_counts_only_the_resends_aired_before_it():
    """0.8 Mbit at 1 Mb/s with a 1 s deadline: the first pass takes 0.8 s, so of the update's 67 packets
    (0.8 Mbit / 11,940 bits each) only floor(0.2 s / 11.94 ms) = 16 resent packets fit before the cut-off."""
    from fedsim.types import ChannelStates

    ch = channel(kind="rayleigh", snr_db=0.0, packet_error="threshold", harq_retransmissions=3, deadline_s=1.0)
    deep_fade = ChannelStates(np.array([0]), np.array([0.0]), np.array([0.001]), np.array([1e6]), np.array([1e6]))  # g < m / snr: lost
    t = ch.uplink(deep_fade, np.array([8e5]), np.random.default_rng(1))[0]
    assert (t.drop_reason, t.packets, t.retransmissions, t.latency_s) == ("deadline", 67, 16, 1.0)
    assert (8e5 + t.retransmissions * 8e5 / t.packets) / 1e6 <= t.latency_s


@pytest.mark.parametrize("deadline_s", [None, 3.6, 3.2])
def test_aircomp_round_latency_starts_the_slot_after_every_scheduled_clients_computation(deadline_s):
    """The slot waits for the slowest computation, a silent (truncated) client's included, as lateness is judged:
    client 1 is truncated but computes for 3 s; the 0.5 s slot then ends at 3.5 s, within 3.6 s, past 3.2 s."""
    from fedsim.types import ChannelStates

    ch = channel(
        mode="aircomp",
        kind="rayleigh",
        snr_db=10.0,
        bandwidth_hz=1e6,
        deadline_s=deadline_s,
        compute={"enabled": True, "cycles_per_sample": 1e8, "cpu_hz": 1e9},
    )
    states = ChannelStates(np.array([0, 1]), np.array([10.0, 10.0]), np.array([1.0, 0.01]), np.array([1e6, 1e6]), np.array([1e6, 1e6]))
    updates = [{"a": np.ones((1000, 1000))}] * 2  # 10^6 real entries: a slot of 0.5 s on 1 MHz
    sent, _ = ch.superpose(updates, np.ones(2), states, np.random.default_rng(0), {"a": (1000, 1000)}, samples=np.array([10, 30]))
    assert [t.compute_s for t in sent] == [1.0, 3.0] and sent[1].drop_reason == "aircomp-truncated"
    if deadline_s == 3.2:
        assert sent[0].drop_reason == "deadline" and ch.round_latency(sent) == 3.2
    else:
        assert sent[0].delivered and sent[0].latency_s == 0.5 and ch.round_latency(sent) == 3.5
