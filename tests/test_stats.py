"""fedsim.stats: paired t-intervals over seeds, bytes to a fixed target; the comparison table on hand-made runs."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from fedsim.stats import NEVER, mean_ci, paired_difference, paired_to_target, target_summary, to_target

REPO = Path(__file__).resolve().parents[1]


def test_paired_interval_matches_the_hand_computation_and_scipy():
    a = {0: 0.50, 1: 0.42, 2: 0.61, 3: 0.47}
    b = {0: 0.45, 1: 0.40, 2: 0.52, 3: 0.46}
    d = np.array([0.05, 0.02, 0.09, 0.01])
    # By hand: mean, sample sd (n - 1), t quantile with n - 1 = 3 dof (t_{0.975,3} = 3.182446).
    half = 3.182446305284263 * d.std(ddof=1) / math.sqrt(4)
    result = paired_difference(a, b)
    assert result.n == 4 and result.seeds == (0, 1, 2, 3)
    assert result.mean == pytest.approx(d.mean(), abs=1e-12)
    assert (result.low, result.high) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-9)
    ci = sps.ttest_rel([a[s] for s in range(4)], [b[s] for s in range(4)]).confidence_interval(0.95)
    assert (result.low, result.high) == pytest.approx((ci.low, ci.high), abs=1e-12)
    # A 90% interval is narrower and agrees with scipy too.
    ci90 = sps.ttest_rel(list(a.values()), list(b.values())).confidence_interval(0.90)
    assert (paired_difference(a, b, 0.90).low, paired_difference(a, b, 0.90).high) == pytest.approx((ci90.low, ci90.high), abs=1e-12)


def test_a_noisy_small_difference_is_not_significant():
    # d = 0.1, 0.2, 0.3 -> mean 0.2, sd 0.1, half-width t_{0.975,2} 0.1 / sqrt 3 = 0.2484 > 0.2.
    result = paired_difference([0.6, 0.7, 0.8], [0.5, 0.5, 0.5])
    assert result.mean == pytest.approx(0.2)
    assert result.low == pytest.approx(0.2 - 4.302652729911275 * 0.1 / math.sqrt(3))
    assert result.low < 0 < result.high and result.verdict == "not significant" and not result.significant


def test_a_consistent_difference_is_significant_even_when_seeds_vary_a_lot():
    # The seeds move both configurations together (shared partitions and fading): pairing removes it.
    seed_effect = np.array([0.20, 0.45, 0.30, 0.60, 0.35])
    a = seed_effect + np.array([0.031, 0.029, 0.030, 0.032, 0.028])
    result = paired_difference(a, seed_effect)
    assert result.verdict == "significant" and 0 < result.low < 0.03 < result.high
    assert sps.ttest_ind(a, seed_effect, equal_var=False).pvalue > 0.5  # unpaired (Welch): nowhere near
    worse = paired_difference(seed_effect, a)
    assert worse.verdict == "significant" and worse.high < 0


def test_one_seed_gives_the_difference_without_an_interval():
    result = paired_difference({3: 0.7}, {3: 0.6, 4: 0.5})
    assert result.mean == pytest.approx(0.1) and result.n == 1
    assert math.isnan(result.low) and math.isnan(result.high) and result.verdict == "n/a (1 seed)"
    none = paired_difference({0: 0.7}, {1: 0.6})
    assert none.n == 0 and none.verdict == "n/a (no shared seeds)"


def test_pairing_uses_only_shared_seeds_and_rejects_infinities():
    result = paired_difference({0: 1.0, 1: 2.0, 2: 4.0, 9: 100.0}, {0: 0.5, 1: 1.0, 2: 3.5, 7: -100.0})
    assert result.seeds == (0, 1, 2) and result.mean == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    with pytest.raises(ValueError, match="non-finite"):
        paired_difference([1.0, NEVER], [1.0, 2.0])
    with pytest.raises(ValueError, match="different lengths"):
        paired_difference([1.0, 2.0], [1.0])


def test_mean_ci_is_the_student_t_interval_over_seeds():
    x = [0.40, 0.47, 0.44]
    ci = mean_ci(x)
    low, high = sps.t.interval(0.95, 2, loc=np.mean(x), scale=sps.sem(x))
    assert (ci.low, ci.high, ci.n) == pytest.approx((low, high, 3))
    single = mean_ci([0.5])
    assert single.mean == 0.5 and math.isnan(single.half_width)


def test_bytes_to_target_counts_never_as_infinity():
    rounds = [
        {"round": 1, "accuracy": 0.2, "cum_bytes_up": 1e6},
        {"round": 2, "accuracy": 0.45, "cum_bytes_up": 2e6},
        {"round": 3, "accuracy": 0.38, "cum_bytes_up": 3e6},
    ]
    assert to_target(rounds, 0.4) == 2e6  # the first round at or above the target, even if it falls back later
    assert to_target(rounds, 0.45) == 2e6
    assert to_target(rounds, 0.5) == NEVER

    # Averaging only the seeds that made it would say 1.0 MB; two of three never did: median inf.
    bad = target_summary([1.0, NEVER, NEVER])
    assert bad.median == math.inf and (bad.reached, bad.never, bad.n) == (1, 2, 3) and bad.fraction == pytest.approx(1 / 3)
    ok = target_summary([1.0, 3.0, NEVER])
    assert ok.median == 3.0 and ok.reached == 2  # the never-seed ranks last, it is not dropped
    assert target_summary([1.0, 2.0, 3.0, NEVER]).median == 2.5
    assert target_summary([1.0, NEVER]).median == math.inf  # half never: the median is not finite
    with pytest.raises(ValueError, match="NaN"):
        target_summary([1.0, math.nan])


def test_paired_bytes_to_target_uses_seeds_both_reached_and_counts_the_rest():
    a = {0: 1.0, 1: 1.2, 2: NEVER, 3: 0.9, 4: NEVER}
    b = {0: 2.0, 1: 2.1, 2: 2.4, 3: 2.0, 4: NEVER}
    result = paired_to_target(a, b)
    assert result.difference.seeds == (0, 1, 3) and result.difference.n == 3
    assert result.difference.mean == pytest.approx(np.mean([-1.0, -0.9, -1.1]))
    assert result.difference.verdict == "significant"
    assert (result.only_a, result.only_b, result.neither) == (0, 1, 1)
    none = paired_to_target({0: NEVER}, {0: 1.0})
    assert none.difference.verdict == "n/a (no seed reached by both)" and none.only_b == 1


# --- the comparison table on hand-made run directories (no training) ---------------------------------


def _write_run(root: Path, name: str, config: dict, accuracies: list[float], bytes_per_round: float, with_reward: bool, eval_final: int):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "summary.json").write_text(json.dumps({"final_accuracy": accuracies[-1]}))
    columns = ["round", "accuracy", "loss", "eval_examples", "cum_bytes_up", "energy_j", "mean_rank", "clients_selected", "clients_dropped"]
    if with_reward:
        columns.append("reward")
    lines = [",".join(columns)]
    for i, acc in enumerate(accuracies, start=1):
        row = [i, acc, 1 - acc, eval_final if i == len(accuracies) else 32, bytes_per_round * i, 0.5, config["policy"].get("rank", 4), 3, 0]
        if with_reward:
            row.append(-1 + acc)
        lines.append(",".join(str(v) for v in row))
    (run / "rounds.csv").write_text("\n".join(lines) + "\n")


def _fake_sweep(root: Path, with_reward: bool) -> None:
    # Deterministic "noise": channel-greedy wobbles around fixed-8 (Δ 0, not significant), fixed-2 adds
    # 0.08 at -5 dB with a small wobble (significant), and every run at 15 dB is 0.10 better.
    wobble = {"fixed_8": [0, 0, 0], "fixed_2": [0.001, -0.001, 0.0005], "channel-greedy": [0.003, -0.003, 0.0]}
    points = []
    for snr in (-5, 15):
        for policy in ({"name": "fixed", "rank": 8}, {"name": "fixed", "rank": 2}, {"name": "channel-greedy"}):
            for seed in (0, 1, 2):
                label = policy["name"] + (f"_{policy['rank']}" if "rank" in policy else "")
                base = 0.31 + 0.05 * seed + (0.1 if snr == 15 else 0)
                bonus = 0.08 if policy.get("rank") == 2 and snr == -5 else 0.0
                final = base + bonus + wobble[label][seed]
                name = f"snr_db={snr}_policy={label}_seed={seed}-0000000000"
                config = {"seed": seed, "channel": {"snr_db": snr}, "policy": policy, "data": {"eval_full_final": True}}
                _write_run(root, name, config, [final / 3, final / 1.5, final], 1e6 * (policy.get("rank", 5) / 4), with_reward, 3080)
                points.append({"dir": name})
    (root / "sweep.json").write_text(
        json.dumps({"fields": ["channel.snr_db", "policy.name", "policy.rank"], "zip_groups": [["policy.name", "policy.rank"]], "points": points})
    )


def _table(text: str, heading: str) -> dict[str, dict[str, str]]:
    """{first cell: {column: cell}} of the markdown table under the heading that starts with `heading`."""
    section = text.split(f"### {heading}", 1)[1].split("###", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row)) for row in rows}


def _script(name: str, *args) -> str:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *map(str, args)], capture_output=True, text=True, check=True, cwd=REPO).stdout


@pytest.mark.parametrize("with_reward", [False, True])
def test_policy_table_prints_paired_differences_against_the_reference(tmp_path, with_reward):
    _fake_sweep(tmp_path, with_reward)
    out = _script("policy_table.py", tmp_path, "--target", "0.3")
    assert "whole test set (3080 examples" in out and "never = +inf" in out and "n-1 dof" in out
    table = _table(out, "SNR -5 dB (reference fixed-8)")
    assert list(table) == ["fixed-8", "fixed-2", "channel-greedy"]  # the sweep's order
    assert table["fixed-8"]["Δ acc vs fixed-8 [95% CI]"] == "(reference)"
    fixed2 = table["fixed-2"]
    assert fixed2["Δ acc vs fixed-8 [95% CI]"].startswith("+0.08") and fixed2["Δ acc verdict"] == "significant"
    assert table["channel-greedy"]["Δ acc verdict"] == "not significant"
    # fixed-8 at -5 dB: accuracy final/3, final/1.5, final with finals 0.31-0.41: target 0.3 in round 3, 2 MB a round.
    assert table["fixed-8"]["reached"] == "3/3" and table["fixed-8"]["MB to 0.3: median"] == "6.000"
    # fixed-2 (0.5 MB a round, finals 0.39 / 0.44 / 0.49): round 3, 3, 2 (0.49 / 1.5 >= 0.3) -> 1.5, 1.5, 1.0 MB.
    assert fixed2["MB to 0.3: median"] == "1.500"
    assert fixed2["Δ MB vs fixed-8, both reached [95% CI]"].startswith("-4.667 [") and fixed2["Δ MB vs fixed-8, both reached [95% CI]"].endswith(
        "significant (n=3)"
    )
    assert ("Δ reward verdict" in fixed2) is with_reward
    # A target fixed-8 never reaches at -5 dB (finals 0.31-0.41): never, not an average of the lucky seeds.
    high = _table(_script("policy_table.py", tmp_path, "--target", "0.45"), "SNR -5 dB")
    assert high["fixed-8"]["MB to 0.45: median"] == "never" and high["fixed-8"]["reached"] == "0/3 (never ×3)"
    assert high["fixed-2"]["reached"] == "1/3 (never ×2)" and high["fixed-2"]["MB to 0.45: median"] == "never"
    assert high["fixed-2"]["Δ MB vs fixed-8, both reached [95% CI]"] == "n/a (no seed reached by both)"
    if with_reward:
        # Per-round reward acc - 1, summed: -3 + 2 final, so the paired Δ is twice the accuracy's.
        assert fixed2["Δ reward vs fixed-8 [95% CI]"].startswith("+0.160") and fixed2["Δ reward verdict"] == "significant"


def test_policy_table_intervals_follow_confidence_and_a_difference_over_fewer_seeds_says_so(tmp_path):
    from fedsim.stats import mean_ci

    _fake_sweep(tmp_path, True)
    table = _table(_script("policy_table.py", tmp_path, "--target", "0.3", "--confidence", "0.5"), "SNR -5 dB (reference fixed-8)")
    finals = [0.31 + 0.05 * seed + 0.08 + d for seed, d in enumerate([0.001, -0.001, 0.0005])]  # fixed-2 at -5 dB
    half = mean_ci(finals, 0.5)
    assert table["fixed-2"]["final acc [50% CI]"] == f"{half.mean:.3f} [{half.low:.3f}, {half.high:.3f}]"
    assert half.high - half.low < mean_ci(finals).high - mean_ci(finals).low
    # The reference loses seed 2: the row still shows 3 seeds, its differences pair 2 and say so.
    shutil.rmtree(tmp_path / "snr_db=-5_policy=fixed_8_seed=2-0000000000")
    table = _table(_script("policy_table.py", tmp_path, "--target", "0.3"), "SNR -5 dB (reference fixed-8)")
    assert table["fixed-2"]["seeds"] == "0,1,2"
    assert table["fixed-2"]["Δ acc vs fixed-8 [95% CI]"].endswith("(n=2)") and table["fixed-2"]["Δ reward vs fixed-8 [95% CI]"].endswith("(n=2)")


def test_snr_table_groups_by_snr_and_pairs_over_seeds(tmp_path):
    _fake_sweep(tmp_path, False)
    out = _script("snr_table.py", tmp_path, "--target", "0.3")
    table = _table(out, "policy fixed-8 (reference snr_db=15)")
    assert list(table) == ["-5", "15"]
    assert table["-5"]["Δ acc vs snr_db=15 [95% CI]"].startswith("-0.10") and table["-5"]["Δ acc verdict"] == "significant"
    assert _table(out, "policy fixed-2")["-5"]["Δ acc vs snr_db=15 [95% CI]"].startswith("-0.020")
    with pytest.raises(subprocess.CalledProcessError):
        _script("snr_table.py", tmp_path, "--reference", "7")


def _updates_through(delivered: tuple) -> float:
    """N = Σ_t mean_k delivered_k of a calibration run of two rounds of two clients (flags in round order)."""
    return (delivered[0] + delivered[1]) / 2 + (delivered[2] + delivered[3]) / 2


def _calibration_run(root: Path, name: str, snr: float, seed: int, rank: int, delivered: tuple, objective: float) -> None:
    """One fixed-rank run for benchmarks/objective_credit.py: its `delivered` flags and an episode objective O,
    split over the two rounds' validation losses."""
    run = root / name
    run.mkdir()
    config = {"seed": seed, "channel": {"snr_db": snr}, "policy": {"name": "fixed", "rank": rank}, "adapter": {"max_rank": 8}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "summary.json").write_text(json.dumps({"final_accuracy": 0.5}))
    (run / "rounds.csv").write_text(f"round,val_loss\n1,{-objective / 2}\n2,{-objective / 2}\n")
    rows = [f"{1 + i // 2},{i % 2},{int(flag)}" for i, flag in enumerate(delivered)]
    (run / "clients.csv").write_text("round,client,delivered\n" + "\n".join(rows) + "\n")


def test_objective_credit_recovers_the_per_rank_credit_of_a_delivered_update(tmp_path):
    """benchmarks/objective_credit.py fits O = a_(level, seed) + c(r) · N: on runs built from known a and c it
    prints c exactly as the scenario curve, and a non-fixed policy is refused in one line with exit 2."""
    credit = {0: 1.0, 4: 2.0, 8: 3.5}
    delivered = {-8: {0: (1, 1, 1, 1), 4: (1, 0, 1, 1), 8: (1, 0, 0, 1)}, 2: {0: (1, 1, 1, 0), 4: (1, 0, 0, 1), 8: (0, 0, 1, 0)},
                 20: {0: (1, 1, 1, 1), 4: (1, 1, 1, 1), 8: (1, 1, 0, 1)}}  # fmt: skip
    for snr, by_rank in delivered.items():
        for rank, flags in by_rank.items():
            _calibration_run(tmp_path, f"snr_db={snr}_rank={rank}", snr, 1000, rank, flags, -8.0 - 0.01 * snr + credit[rank] * _updates_through(flags))
    out = _script("objective_credit.py", tmp_path)
    assert "policy.reward.objective_credit: [[0, 1.00], [0.5, 2.00], [1, 3.50]]" in out
    assert "6 runs, 2 groups" in _script("objective_credit.py", tmp_path, "--levels", "-8", "20")
    other = tmp_path / "snr_db=20_rank=8" / "config.yaml"
    refused = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "objective_credit.py"), str(tmp_path), "--anchors", "2"], capture_output=True, text=True, cwd=REPO
    )
    assert refused.returncode == 2 and "two or more distinct SNRs" in refused.stderr
    other.write_text(yaml.safe_dump({"seed": 1000, "channel": {"snr_db": 20}, "policy": {"name": "channel-greedy"}, "adapter": {"max_rank": 8}}))
    refused = subprocess.run([sys.executable, str(REPO / "benchmarks" / "objective_credit.py"), str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "fixed uniform ranks" in refused.stderr


def test_objective_credit_by_snr_anchor_recovers_a_credit_that_changes_with_the_level(tmp_path):
    """--anchors -8 20: c(r, s) linear in s between one curve per anchor; runs built from a known c(r, s) at -8, 6
    and 20 dB (6 = halfway) give the anchors' curves back exactly, printed as the by-SNR scenario mapping."""
    low, high = {0: 2.0, 8: 5.0}, {0: 0.5, 8: 1.0}
    flags = {(1000, 0): (1, 1, 1, 1), (1000, 8): (1, 0, 0, 1), (1001, 0): (1, 1, 1, 0), (1001, 8): (0, 0, 1, 0)}
    for snr in (-8, 6, 20):
        weight = (20 - snr) / 28
        for (seed, rank), delivered in flags.items():
            credit = weight * low[rank] + (1 - weight) * high[rank]
            _calibration_run(
                tmp_path,
                f"snr_db={snr}_rank={rank}_seed={seed}",
                snr,
                seed,
                rank,
                delivered,
                -8.0 - 0.01 * snr - seed / 1000 + credit * _updates_through(delivered),
            )
    out = _script("objective_credit.py", tmp_path, "--anchors", "20", "-8")
    assert "policy.reward.objective_credit: {-8: [[0, 2.00], [1, 5.00]], 20: [[0, 0.50], [1, 1.00]]}" in out
    assert float(re.search(r"p = (\S+)", out).group(1)) < 1e-6  # the pooled curve misfits runs an exact by-SNR credit fits


def test_objective_credit_with_diminishing_returns_recovers_gamma_and_weights(tmp_path):
    """--returns diminishing fits O = a_(level, seed) + γ log(1 + w(r) N): runs built from a known γ and w give them
    back, the credit per level is γ w(r) / (1 + N_0) with N_0 the rank-0 runs' delivered count there, and the linear
    model misfits such runs (higher BIC)."""
    gamma, weight = 3.0, {0: 0.5, 8: 1.5}
    flags = [(1, 1, 1, 1), (1, 1, 0, 1), (1, 0, 0, 1), (0, 0, 1, 0), (1, 1, 1, 0), (0, 1, 0, 0)]
    for snr in (-8, 20):
        for seed in (1000, 1001, 1002):
            for rank in (0, 8):
                delivered = flags[(seed - 1000) * 2 + (rank == 8)] if snr == -8 else (1, 1, 1, 1)
                if snr == 20 and rank == 8 and seed == 1002:
                    delivered = (1, 1, 0, 1)
                name = f"snr_db={snr}_rank={rank}_seed={seed}"
                _calibration_run(
                    tmp_path, name, snr, seed, rank, delivered, -8.0 - 0.01 * snr - seed / 1000 + gamma * math.log1p(weight[rank] * _updates_through(delivered))
                )
    out = _script("objective_credit.py", tmp_path, "--returns", "diminishing")
    assert "γ = 3.000" in out and "| 0 | 0.500 |" in out and "| 8 | 1.500 |" in out
    n0 = {-8: (2.0 + 1.0 + 1.5) / 3, 20: 2.0}  # rank-0 runs' mean N per level
    expected = ", ".join(f"{snr}: [[0, {gamma * 0.5 / (1 + n):.2f}], [1, {gamma * 1.5 / (1 + n):.2f}]]" for snr, n in n0.items())
    assert f"policy.reward.objective_credit: {{{expected}}}" in out
    fitted_bic, linear_bic = (float(v) for v in re.findall(r"BIC (-?[\d.]+|-inf)", out))
    assert fitted_bic < linear_bic


def test_reward_parts_pairs_an_earlier_versions_runs_from_another_directory(tmp_path):
    # Two rounds per run; the earlier ppo (directory "before") has a validation loss 0.1 higher and a reward
    # 0.3 lower per round than the current one, seed by seed: parts -0.2 and -0.4, reward -0.6, each exact.
    for directory, loss_shift, reward_shift in (("now", 0.0, 0.0), ("before", 0.1, -0.3)):
        for seed in (0, 1, 2):
            run = tmp_path / directory / f"snr_db=5_policy=ppo_seed={seed}-0000000000"
            run.mkdir(parents=True)
            config = {"seed": seed, "channel": {"snr_db": 5}, "policy": {"name": "ppo"}}
            (run / "config.yaml").write_text(yaml.safe_dump(config))
            (run / "summary.json").write_text(json.dumps({"final_accuracy": 0.4}))
            rows = [f"{t},{-1.0 - 0.1 * seed + reward_shift},{2.0 - 0.1 * t + loss_shift}" for t in (1, 2)]
            (run / "rounds.csv").write_text("round,reward,val_loss\n" + "\n".join(rows) + "\n")
    out = _script("reward_parts.py", tmp_path / "now", "--reference", "ppo", "--versus", tmp_path / "before")
    row = next(line for line in out.splitlines() if line.startswith("| ppo (before) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "0,1,2" and [c.split()[0] for c in cells[2:]] == ["-0.200", "-0.400", "-0.600"]
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = subprocess.run([sys.executable, str(REPO / "benchmarks" / "reward_parts.py"), tmp_path / "now", "--reference", "ppo", "--versus", empty],
                             capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "no finished runs" in refused.stderr


def test_policy_share_optimum_prints_the_policys_share_and_its_signals_optimum_by_fitting_rank():
    out = _script("policy_share_optimum.py", "--policy", "ppo", "--checkpoint", "policies/checkpoints/ppo", "--levels", "-2", "--seeds", "2", "--rounds", "2")
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| -2 |") and "| all |" not in line]
    assert rows and "objective credit" in out
    # --train: a fresh ppo learns on the synthetic channel, then is judged the same way; a signal whose rank is worth far
    # more than its airtime has f* = 1 (send all that fits) everywhere, and regret >= 0 by construction
    steep = "{objective_credit: {-8: [[0, 0], [1, 50]], 20: [[0, 0], [1, 50]]}}"
    trained = _script("policy_share_optimum.py", "--policy", "ppo", "--train", "96", "--config", "{n_steps: 32, batch_size: 32, n_epochs: 1}",
                      "--reward", steep, "--levels", "-2", "--seeds", "2", "--rounds", "2")  # fmt: skip
    assert "trained ppo" in trained and "for 96 decisions" in trained
    table = [line.strip("|").split("|") for line in trained.splitlines() if line.startswith("| -2 |")]
    assert table and all(float(row[4]) == 1.0 for row in table if row[1].strip() != "all")
    assert min(float(row[5]) for row in table) >= 0.0
    both = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "policy_share_optimum.py"), "--policy", "ppo", "--train", "5", "--checkpoint", "policies/checkpoints/ppo"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert both.returncode == 2 and both.stderr.count("\n") == 1 and "not both" in both.stderr
    for _, r_fit, decisions, share, best, _ in rows:
        assert 1 <= int(r_fit) <= 8 and int(decisions) > 0 and 0 <= float(share) <= 1 and 0 <= float(best) <= 1
    refused = subprocess.run([sys.executable, str(REPO / "benchmarks" / "policy_share_optimum.py"), "--policy", "ppo", "--checkpoint", "nowhere"],
                             capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "policy.json" in refused.stderr


def test_policy_behaviour_counts_the_runs_that_follow_the_channel_per_snr(tmp_path):
    """benchmarks/policy_behaviour.py: within-run Spearman per SNR, with the runs at or above the threshold, and the
    runs whose ranks never vary (no correlation) counted apart rather than as 0."""
    fading = [0.25, 0.5, 1.0, 2.0]  # one client-round each, instantaneous SNR rising
    for snr in (-5, 15):
        for policy in ({"name": "channel-greedy"}, {"name": "fixed", "rank": 2}):
            for seed in (0, 1, 2):
                label = policy["name"] + (f"_{policy['rank']}" if "rank" in policy else "")
                name = f"snr_db={snr}_policy={label}_seed={seed}-0000000000"
                config = {"seed": seed, "channel": {"snr_db": snr}, "policy": policy, "data": {"eval_full_final": True}}
                _write_run(tmp_path, name, config, [0.2, 0.3, 0.4], 1e6, False, 3080)
                if "rank" in policy:
                    ranks = [2, 2, 2, 2]
                elif snr == 15 and seed == 2:
                    ranks = [8, 6, 4, 2]  # against the channel: Spearman -1
                else:
                    ranks = [1, 2, 4, 8]
                rows = [f"{i // 2 + 1},{i % 2},{snr},{g},{r} {r}" for i, (g, r) in enumerate(zip(fading, ranks))]
                (tmp_path / name / "clients.csv").write_text("round,client,snr_db,fading_gain,ranks\n" + "\n".join(rows) + "\n")
    out = _script("policy_behaviour.py", tmp_path)
    section = out.split("Spearman within a run", 1)[1].split("Dominance", 1)[0]
    table = {row[0]: row[1:] for row in ([c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| "))}
    assert table["channel-greedy"] == ["1.00 (1.00), 3/3", "0.33 (-1.00), 2/3"]
    assert table["fixed-2"] == ["n/a (3 without a correlation)", "n/a (3 without a correlation)"]
    assert "0/3" in _script("policy_behaviour.py", tmp_path, "--threshold", "1.01")
    # A second configuration under the same label (here adalora's schedule would differ) is refused, not averaged in.
    twin = tmp_path / "snr_db=15_policy=channel-greedy-2_seed=0-1111111111"
    shutil.copytree(tmp_path / "snr_db=15_policy=channel-greedy_seed=0-0000000000", twin)
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "policy_behaviour.py"), str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and "channel-greedy at channel.snr_db=15 has seed 0 twice" in done.stderr and len(done.stderr.strip().splitlines()) == 1
