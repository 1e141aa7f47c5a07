"""What the figures and the comparison tables claim, on hand-made run directories (no training): budget bars say
what they measured and spent, a diverged seed or a repeated run does not pass as a seed, rewards and labels compare
like with like."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from matplotlib.colors import to_hex
from test_stats import REPO, _fake_sweep, _script, _table, _write_run

from fedsim import plots
from fedsim.collect import episode_reward, policy_label, read_finished_run, results_table
from fedsim.stats import paired_difference
from fedsim.types import FedsimError

RUN = "snr_db={snr}_policy={label}_seed={seed}-0000000000"  # _fake_sweep's run directory names


def _clients(root: Path) -> None:
    """A clients.csv in every run directory under `root` (the rank heatmap reads the first run's)."""
    for run in root.iterdir():
        if (run / "rounds.csv").is_file():
            (run / "clients.csv").write_text("round,client,ranks\n1,0,4 4\n")


def _sweep(root: Path, with_reward: bool = False) -> Path:
    """_fake_sweep: fixed-8 (2 MB a round), fixed-2 (0.5 MB) and channel-greedy (1.25 MB) at -5 and 15 dB, seeds
    0-2, three rounds, the last evaluated on 3080 examples and the others on 32."""
    _fake_sweep(root, with_reward)
    _clients(root)
    return root


def _rewrite(root: Path, name: str, **changes) -> None:
    """Write run `name` again with another bytes_per_round, accuracies or config (the rest as _fake_sweep wrote it)."""
    run = read_finished_run(root / name)
    config = yaml.safe_load((root / name / "config.yaml").read_text())
    config.update(changes.pop("config", {}))
    accuracies = changes.pop("accuracies", [row["accuracy"] for row in run.rounds])
    per_round = changes.pop("bytes_per_round", run.rounds[0]["cum_bytes_up"])
    shutil.rmtree(root / name)
    _write_run(root, name, config, accuracies, per_round, "reward" in run.rounds[0], 3080)
    (root / name / "clients.csv").write_text("round,client,ranks\n1,0,4 4\n")


@pytest.fixture
def figures(monkeypatch):
    """{figure stem: the matplotlib Figure} of every figure fedsim.plots saves meanwhile."""
    saved = {}
    save = plots._save

    def keep(fig, out_dir, stem):
        saved[stem] = fig
        return save(fig, out_dir, stem)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def _bars(fig) -> dict[str, dict]:
    """{tick label: {"color", "hatch", "height"} or {} for an empty slot} of the budget bar figure."""
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    out: dict[str, dict] = {label: {} for label in labels}
    for rect in ax.patches:
        label = labels[round(rect.get_x() + rect.get_width() / 2)]
        out[label] = {"color": to_hex(rect.get_facecolor()), "hatch": rect.get_hatch() or "", "height": rect.get_height()}
    return out


def _texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))


def _bar(bars: dict, *parts: str) -> tuple[str, dict]:
    (match,) = [(label, bar) for label, bar in bars.items() if all(p in label.split("\n") for p in parts)]
    return match


# --- 1. accuracy at a budget -------------------------------------------------------------------------------


def test_budget_bars_say_what_each_bar_measured_spent_and_which_groups_do_not_fit(tmp_path, figures):
    root = _sweep(tmp_path)
    plots.make_plots(root, out_dir=tmp_path / "figs")
    fig = figures["accuracy_at_budget"]
    bars, text = _bars(fig), _texts(fig)
    # Default budget 1.5 MB (fixed-2's total): fixed-2's round 3, on the whole test set; channel-greedy's round 1
    # (1.25 MB), on the 32-example subset; fixed-8 uploads 2 MB in its first round: an empty slot, not a gap.
    assert len(bars) == 6
    label, fixed2 = _bar(bars, "name=fixed", "snr_db=-5", "rank=2")
    assert label.endswith("n=3, 1.5 MB") and fixed2["hatch"] == "///"
    label, greedy = _bar(bars, "name=channel-greedy", "snr_db=-5")
    assert label.endswith("n=3, 1.25 MB") and greedy["hatch"] == ""
    label, fixed8 = _bar(bars, "name=fixed", "snr_db=15", "rank=8")
    assert fixed8 == {} and label.endswith("n=0 of 3") and text.count("over budget") == 2
    assert "plain: per-round subset, 32 examples; hatched: whole test set, 3080 examples" in text
    assert "upload budget of 1.5 MB" in text and "mean of 3 seeds" in text


def test_budget_bars_mark_a_group_of_mixed_evaluations_and_count_seeds_per_bar(tmp_path, figures):
    root = _sweep(tmp_path)
    # channel-greedy seed 0 at 15 dB sends 0.5 MB a round: its last round fits 1.5 MB, the other seeds' first.
    _rewrite(root, RUN.format(snr=15, label="channel-greedy", seed=0), bytes_per_round=5e5)
    shutil.rmtree(root / RUN.format(snr=-5, label="fixed_2", seed=2))
    plots.make_plots(root, out_dir=tmp_path / "figs")
    fig = figures["accuracy_at_budget"]
    bars, text = _bars(fig), _texts(fig)
    label, mixed = _bar(bars, "name=channel-greedy", "snr_db=15")
    assert mixed["hatch"] == "xx" and label.endswith("n=3, 1.33 MB") and "(mixed)" in text
    assert "cross-hatched (mixed)" in text
    assert _bar(bars, "name=fixed", "snr_db=-5", "rank=2")[0].endswith("n=2, 1.5 MB")
    assert "means of 2-3 seeds" in text


def test_a_budget_equal_to_a_runs_total_includes_that_round_and_is_titled_with_its_digits(tmp_path, figures):
    # 0.125014 * 1e6 is 125013.99999999999: a run that uploaded exactly 125014 bytes must fit 0.125014 MB.
    config = {"seed": 0, "policy": {"name": "fixed", "rank": 2}, "data": {"eval_full_final": True}}
    _write_run(tmp_path, "run", config, [0.2, 0.3], 125014, False, 3080)
    _clients(tmp_path)
    plots.make_plots(tmp_path, budget_mb=0.125014, out_dir=tmp_path / "figs")
    text = _texts(figures["accuracy_at_budget"])
    assert "upload budget of 0.125 MB" in text and "n=1, 0.125 MB" in text
    with pytest.raises(FedsimError, match="no run uploads that little"):
        plots.make_plots(tmp_path, budget_mb=0.125013, out_dir=tmp_path / "figs")
    small = tmp_path / "small"
    _write_run(small, "run", config, [0.2, 0.3], 2000, False, 3080)
    _clients(small)
    plots.make_plots(small, out_dir=tmp_path / "figs")
    assert "upload budget of 0.004 MB" in _texts(figures["accuracy_at_budget"])  # the default, its total; not "0.00 MB"


def test_budget_bars_take_each_policy_colour_from_the_curves_figure(tmp_path, figures):
    root = _sweep(tmp_path)
    plots.make_plots(root, budget_mb=6, out_dir=tmp_path / "figs")
    curves = {line.get_label(): to_hex(line.get_color()) for ax in figures["accuracy_vs_bytes_up"].axes for line in ax.get_lines()}
    bars = _bars(figures["accuracy_at_budget"])
    for hue, parts in (("name=fixed, rank=2", ("rank=2",)), ("name=fixed, rank=8", ("rank=8",)), ("name=channel-greedy", ("name=channel-greedy",))):
        for snr in (-5, 15):
            assert _bar(bars, *parts, f"snr_db={snr}")[1]["color"] == curves[hue]
    assert curves["name=fixed, rank=2"] != curves["name=fixed, rank=8"]


# --- 2. a repeated run is not another seed --------------------------------------------------------------------


def test_a_repeated_run_is_refused_naming_both_directories_and_the_seed(tmp_path, figures):
    root = _sweep(tmp_path)
    name = RUN.format(snr=15, label="fixed_2", seed=1)
    shutil.copytree(root / name, root / "rerun")
    manifest = json.loads((root / "sweep.json").read_text())
    (root / "sweep.json").write_text(json.dumps({**manifest, "points": [*manifest["points"], {"dir": "rerun"}]}))
    with pytest.raises(FedsimError) as error:
        plots.make_plots(root, out_dir=tmp_path / "figs")
    message = str(error.value)
    assert f"runs rerun and {name} both have seed 1" in message and "move one of them out of the directory" in message
    assert len(message.splitlines()) == 1 and not (tmp_path / "figs").exists()


# --- 3. a diverged seed ends its curve -------------------------------------------------------------------------


def test_a_curve_ends_where_a_seed_diverges_and_says_so(tmp_path, figures):
    root = _sweep(tmp_path)
    name = RUN.format(snr=-5, label="fixed_2", seed=1)
    _rewrite(root, name, accuracies=[0.1, math.nan, 0.3])
    _, rows, _, fields = results_table(root)
    hue, facet = plots._choose_roles(plots.sweep_axes(root, fields), None, None)
    curve = plots._curves(rows, "cum_bytes_up", "accuracy", hue, facet)[(-5,)][("fixed", 2)]
    assert len(curve.xs) == 1 and curve.diverged and curve.n == 3  # round 1 only: not seeds 0 and 2 alone after it
    assert curve.ys[0] == pytest.approx((0.1 + (0.31 + 0.08 + 0.001) / 3 + (0.41 + 0.08 + 0.0005) / 3) / 3)
    shutil.rmtree(root / RUN.format(snr=15, label="fixed_8", seed=2))
    plots.make_plots(root, out_dir=tmp_path / "figs")
    text = _texts(figures["accuracy_vs_bytes_up"])
    assert "✕: a seed diverged after this round" in text and "means of 2-3 seeds" in text and "n=2" in text


def test_a_last_round_measured_on_the_whole_test_set_is_drawn_apart_and_footnoted(tmp_path, figures):
    """_fake_sweep's runs evaluate rounds 1-2 on 32 examples and round 3 on 3,080 (data.eval_full_final)."""
    root = _sweep(tmp_path)
    _, rows, _, fields = results_table(root)
    hue, facet = plots._choose_roles(plots.sweep_axes(root, fields), None, None)
    assert plots._curves(rows, "cum_bytes_up", "accuracy", hue, facet)[(-5,)][("fixed", 8)].last_examples == (3080, 32)
    plots.make_plots(root, out_dir=tmp_path / "figs")
    fig = figures["accuracy_vs_bytes_up"]
    assert "the last round, measured on 3080 test examples, the rounds before on 32" in _texts(fig)
    dotted = [line for ax in fig.axes for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert dotted and all(len(line.get_xdata()) == 2 for line in dotted)  # only the step into the last round
    solid = [line for ax in fig.axes for line in ax.get_lines() if line.get_linestyle() == "-"]
    assert solid and all(len(line.get_xdata()) == 2 for line in solid)  # rounds 1-2, on one subset


# --- 4, 5. labels ---------------------------------------------------------------------------------------------


def test_a_fixed_policy_with_per_layer_ranks_is_labelled_by_them_and_is_not_the_default_reference(tmp_path):
    assert policy_label({"policy.name": "fixed", "policy.rank": 8, "policy.ranks": [2, 2]}) == "fixed-[2,2]"
    assert policy_label({"policy.name": "fixed", "policy.rank": 8, "policy.ranks": None}) == "fixed-8"
    for seed in (0, 1):
        for tag, policy in (("layers", {"name": "fixed", "rank": 8, "ranks": [2, 2]}), ("greedy", {"name": "channel-greedy"})):
            _write_run(tmp_path, f"p={tag}_seed={seed}", {"seed": seed, "policy": policy}, [0.2, 0.3], 1e6, False, 3080)
    refused = subprocess.run([sys.executable, str(REPO / "benchmarks" / "policy_table.py"), str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2 and "no fixed-8 runs" in refused.stderr and "fixed-[2,2]" in refused.stderr


def test_results_hold_the_policy_label_in_a_whole_block_policy_zips_column(tmp_path):
    _sweep(tmp_path)
    manifest = json.loads((tmp_path / "sweep.json").read_text())
    (tmp_path / "sweep.json").write_text(json.dumps({**manifest, "fields": ["channel.snr_db", "policy"], "zip_groups": [["policy"]]}))
    columns, rows, _, _ = results_table(tmp_path)
    assert "policy" in columns
    assert {row["policy"] for row in rows} == {"fixed-8", "fixed-2", "channel-greedy"}


# --- 6. the policy table -------------------------------------------------------------------------------------


def test_policy_table_refuses_rewards_computed_with_different_settings(tmp_path):
    root = _sweep(tmp_path, with_reward=True)
    for seed in (0, 1, 2):
        for snr in (-5, 15):
            name = RUN.format(snr=snr, label="channel-greedy", seed=seed)
            _rewrite(root, name, config={"policy": {"name": "ppo", "reward": {"objective_credit": [[0, 0.4], [1, 0.9]]}}})
    # objective_credit is a learning signal only: the rewards still compare.
    assert "| ppo |" in _script("policy_table.py", root, "--target", "0.3")
    _rewrite(root, RUN.format(snr=15, label="channel-greedy", seed=1), config={"policy": {"name": "ppo", "reward": {"lam": 0.5}}})
    refused = subprocess.run([sys.executable, str(REPO / "benchmarks" / "policy_table.py"), str(root)], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "fixed-8 and ppo" in refused.stderr and "(policy.reward.lam)" in refused.stderr


def test_an_episode_with_a_non_finite_round_reward_is_nan_in_the_table(tmp_path):
    root = _sweep(tmp_path, with_reward=True)
    name = RUN.format(snr=-5, label="fixed_2", seed=1)
    ledger = root / name / "rounds.csv"
    lines = ledger.read_text().splitlines()
    lines[2] = ",".join(lines[2].split(",")[:-1] + ["nan"])  # round 2's reward
    ledger.write_text("\n".join(lines) + "\n")
    assert math.isnan(episode_reward(read_finished_run(root / name)))
    table = _table(_script("policy_table.py", root, "--target", "0.3"), "SNR -5 dB (reference fixed-8)")
    assert table["fixed-2"]["reward [95% CI]"] == "nan (seed 1 non-finite)"
    assert table["fixed-2"]["Δ reward vs fixed-8 [95% CI]"] == "nan" and table["fixed-2"]["Δ reward verdict"].startswith("n/a")
    assert table["channel-greedy"]["Δ reward verdict"] == "not significant"


def test_policy_table_lists_the_seeds_its_delta_mb_leaves_out(tmp_path):
    root = _sweep(tmp_path)
    out = _script("policy_table.py", root, "--target", "0.45")
    section = out.split("### SNR -5 dB", 1)[1].split("###", 1)[0]
    # fixed-8 never reaches 0.45 at -5 dB; fixed-2 does with seed 2 only, channel-greedy with none.
    assert "- fixed-2: Δ MB vs fixed-8 leaves out 3 shared seeds where not both reached 0.45: 1 where only fixed-2 reached it, 2 where neither did" in section
    assert "- channel-greedy: Δ MB vs fixed-8 leaves out 3 shared seeds where not both reached 0.45: 3 where neither did" in section
    assert "- fixed-8:" not in section


def test_policy_table_reads_what_the_last_round_was_evaluated_on_from_defaults_and_a_null_subset(tmp_path):
    root = _sweep(tmp_path)
    for run in root.iterdir():
        if run.is_dir():
            _rewrite(root, run.name, config={"data": {}})  # no eval_full_final, as a hand-made run: its default, true
    out = _script("policy_table.py", root, "--target", "0.3")
    assert "evaluated on the whole test set (3080 examples; data.eval_full_final: true" in out and "MIXED" not in out
    for run in root.iterdir():
        if run.is_dir():
            _rewrite(root, run.name, config={"data": {"eval_samples": None, "eval_full_final": False}})
    out = _script("policy_table.py", root, "--target", "0.3")
    assert "evaluated on the whole test set (3080 examples), as every round is (data.eval_samples: null)" in out
    assert "per-round subset" not in out


def test_policy_table_flags_a_difference_over_fewer_seeds_than_the_reference_has(tmp_path):
    root = _sweep(tmp_path)
    shutil.rmtree(root / RUN.format(snr=-5, label="fixed_2", seed=2))
    table = _table(_script("policy_table.py", root, "--target", "0.3"), "SNR -5 dB (reference fixed-8)")
    assert table["fixed-2"]["seeds"] == "0,1" and table["fixed-2"]["Δ acc vs fixed-8 [95% CI]"].endswith("(n=2)")
    assert not table["channel-greedy"]["Δ acc vs fixed-8 [95% CI]"].endswith(")")


# --- 7. policy_behaviour ---------------------------------------------------------------------------------------


def test_policy_behaviour_names_what_it_writes_and_compares_dominance_on_shared_seeds(tmp_path):
    helped = _script("policy_behaviour.py", "--help")
    assert "rank_profile_<policy>.png and .svg" in helped and ".pdf" not in helped
    # fixed-2 sends fewer MB; on the seeds both have (0, 1) fixed-8 is more accurate (0.45 vs 0.40), and only
    # fixed-2's seed 2, which fixed-8 lacks, lifts fixed-2's mean over all its seeds above fixed-8's.
    for policy, finals in (({"name": "fixed", "rank": 2}, [0.40, 0.40, 0.90]), ({"name": "fixed", "rank": 8}, [0.45, 0.45])):
        for seed, final in enumerate(finals):
            name = f"p={policy['rank']}_seed={seed}"
            config = {"seed": seed, "channel": {"snr_db": 5}, "policy": policy}
            _write_run(tmp_path, name, config, [final / 2, final], 1e6 * policy["rank"], False, 3080)
            (tmp_path / name / "clients.csv").write_text(f"round,client,snr_db,fading_gain,ranks\n1,0,5,1.0,{policy['rank']} {policy['rank']}\n")
    out = _script("policy_behaviour.py", tmp_path)
    assert "channel.snr_db=5: fixed-8: accuracy 0.450, 16.00 MB: not dominated" in out
    assert "channel.snr_db=5: fixed-2: accuracy 0.567, 4.00 MB: not dominated" in out


def _two_adalora_configs(root: Path) -> Path:
    """fixed-8 on seeds 0-2; adalora with tinit 1 on seeds 0-2 and with tinit 3 on seeds 3-5: one label, two configurations."""
    for seed in range(6):
        data = {"eval_full_final": True}
        if seed < 3:
            _write_run(root, f"fixed8_{seed}", {"seed": seed, "policy": {"name": "fixed", "rank": 8}, "data": data}, [0.3, 0.5], 1e6, False, 3080)
        adalora = {"seed": seed, "policy": {"name": "adalora", "tinit": 1 if seed < 3 else 3}, "data": data}
        _write_run(root, f"adalora_{seed}", adalora, [0.3, 0.45 if seed < 3 else 0.7], 1e6, False, 3080)
        (root / f"adalora_{seed}" / "clients.csv").write_text("round,client,ranks,snr_db\n1,0,4 4,1.0\n2,0,4 4,2.0\n")
    return root


def test_a_label_whose_runs_differ_in_a_policy_field_on_other_seeds_is_split_by_it_or_refused(tmp_path):
    root = _two_adalora_configs(tmp_path)
    table = _table(_script("policy_table.py", root, "--reference", "fixed-8", "--target", "0.3"), "all runs")
    assert {"adalora tinit=1", "adalora tinit=3"} <= set(table), list(table)  # not one row averaging 0.45 and 0.7
    assert table["adalora tinit=1"]["seeds"] == "0,1,2" and table["adalora tinit=3"]["seeds"] == "3,4,5"
    for script, args in (("policy_behaviour.py", ()), ("reward_parts.py", ("--reference", "fixed-8"))):
        done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), str(root), *args], capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, (script, done.stderr)
        assert "the adalora runs differ in policy.tinit (1, 3)" in done.stderr, done.stderr


def test_a_confidence_level_outside_0_1_is_refused_in_one_line_and_a_fraction_prints_its_digits(tmp_path):
    _fake_sweep(tmp_path, False)
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "policy_table.py"), str(tmp_path), "--confidence", "95"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 2 and "95: a confidence level is a fraction strictly between 0 and 1" in done.stderr
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        paired_difference({0: 1.0, 1: 2.0}, {0: 0.0, 1: 0.5}, confidence=95)
    assert "[97.5% CI]" in _script("policy_table.py", tmp_path, "--target", "0.3", "--confidence", "0.975")


def test_reward_parts_scores_a_diverged_episode_as_not_available_not_by_its_other_rounds(tmp_path):
    for seed in (0, 1):
        for name, rewards in (("fixed", [-2.0, -1.5, -1.0]), ("ppo", [-2.0, -1.9, math.nan if seed == 0 else -0.5])):
            run = tmp_path / f"{name}_{seed}"
            run.mkdir()
            policy = {"name": name, "rank": 8} if name == "fixed" else {"name": name}
            (run / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "policy": policy}))
            (run / "summary.json").write_text(json.dumps({"final_accuracy": 0.5, "rounds": 3}))
            lines = ["round,accuracy,loss,eval_examples,cum_bytes_up,val_loss,reward"]
            lines += [f"{i},0.5,1.0,32,{i * 100},1.0,{r}" for i, r in enumerate(rewards, start=1)]
            (run / "rounds.csv").write_text("\n".join(lines) + "\n")
    out = _script("reward_parts.py", tmp_path, "--reference", "fixed-8")
    assert "| ppo | 0,1 | n/a (seed 0: a non-finite round reward)" in out, out


def test_a_subset_as_large_as_the_test_set_is_the_whole_test_set_and_an_empty_cell_is_missing(tmp_path):
    """summary.json's test_examples tells a subset of eval_samples from a test set of exactly that size."""
    from fedsim.collect import FinishedRun, evaluated_on_whole_test_set, read_rounds

    config = {"data.eval_samples": 500, "data.eval_full_final": False}
    rows = [{"round": 1, "eval_examples": 500}]
    for test_examples, whole in ((500, True), (3080, False)):
        assert evaluated_on_whole_test_set(FinishedRun(Path("x"), config, {"test_examples": test_examples}, rows), rows[0]) is whole
    assert not evaluated_on_whole_test_set(FinishedRun(Path("x"), config, {}, rows), rows[0])  # an older run: read as a subset
    (tmp_path / "rounds.csv").write_text("round,accuracy,aircomp_mse\n1,0.5,\n2,0.6,0.01\n")
    assert [r["aircomp_mse"] for r in read_rounds(tmp_path / "rounds.csv")] == [None, 0.01]
