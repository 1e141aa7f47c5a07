"""The episode reward split into its two parts, paired over seeds against a reference policy.

A learning policy's round reward (`policies.common.round_reward`, objective `loss`) is the round's objective,
-validation loss, plus the mean of the clients' own terms (calibrated utility of the delivered rank minus
airtime cost, or the deadline penalty). rounds.csv records the reward and the validation loss, so over an
episode

    objective part = -sum(val_loss),    clients' part = sum(reward) - objective part.

For every SNR level (`--split`) and policy this prints the paired difference *policy - reference* of each
part over seeds, with its 95% Student t interval (`fedsim.stats.paired_difference`): which part a policy wins
or loses on. Runs whose reward used another objective (`policy.reward.objective: accuracy`) are refused.
`--versus DIR` adds the runs of another directory, labelled `<policy> (<DIR's name>)`: an earlier checkpoint's
runs, moved aside before a retrained one's, against the retrained one on the same seeds.

    .venv/bin/python benchmarks/reward_parts.py runs/policy_compare --reference ppo
    .venv/bin/python benchmarks/reward_parts.py runs/policy_compare --reference ppo --versus runs/policy_compare_ppo_bysnr8
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from policy_table import check_reward_configs  # noqa: E402

from fedsim.collect import FinishedRun, by_seed, check_one_policy_config, find_finished_runs, policy_label  # noqa: E402
from fedsim.stats import format_interval, paired_difference  # noqa: E402
from fedsim.types import FedsimError, run_script  # noqa: E402


def parts(run: FinishedRun) -> tuple[float, float]:
    """(objective part, clients' part) of the run's episode reward; both NaN when a round's reward is not finite (a
    diverged validation loss: summing the other rounds would score the run above one that did not diverge, as
    `fedsim.collect.episode_reward` says)."""
    objective = run.config.get("policy.reward.objective", "loss")
    if objective != "loss":
        raise FedsimError(f"{run.path}: policy.reward.objective={objective}; this split needs the loss objective")
    rows = [r for r in run.rounds if isinstance(r.get("reward"), (int, float))]
    if not rows:
        raise FedsimError(f"{run.path}: rounds.csv has no reward (run with data.validation_samples > 0)")
    if not all(math.isfinite(r["reward"]) and isinstance(r.get("val_loss"), (int, float)) and math.isfinite(r["val_loss"]) for r in rows):
        return math.nan, math.nan
    objective_part = -sum(float(r["val_loss"]) for r in rows)
    return objective_part, sum(float(r["reward"]) for r in rows) - objective_part


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="a finished sweep directory")
    parser.add_argument("--reference", required=True, help="the policy label every other is compared with (e.g. ppo, channel-greedy, fixed-8)")
    parser.add_argument("--split", default="channel.snr_db", help="one table per value of this field (default channel.snr_db)")
    parser.add_argument(
        "--versus", type=Path, action="append", default=[], metavar="DIR",
        help="another directory whose runs join the tables as '<policy> (<DIR name>)', e.g. an earlier checkpoint's runs (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    groups: dict = defaultdict(lambda: defaultdict(list))
    for directory, suffix in [(args.dir, "")] + [(d, f" ({d.name})") for d in args.versus]:
        runs = find_finished_runs(directory)
        if not runs:
            raise FedsimError(f"{directory}: no finished runs")
        for run in runs:
            groups[run.config.get(args.split)][policy_label(run.config) + suffix].append(run)
    for label in {label for policies in groups.values() for label in policies}:
        check_one_policy_config([run for policies in groups.values() for run in policies.get(label, [])], label, str(args.dir))
    for level in sorted(groups, key=lambda v: (str(type(v)), v)):
        policies = groups[level]
        if args.reference not in policies:
            raise FedsimError(f"--reference {args.reference!r}: not among {', '.join(policies)} ({args.split}={level})")
        check_reward_configs(policies, f"{args.dir} ({args.split}={level})")
        reference = {seed: parts(run) for seed, run in by_seed(policies[args.reference], args.reference).items()}
        print(f"\n### {args.split} = {level}: policy - {args.reference}, paired over seeds [95% t-CI]\n")
        print("| policy | seeds | Δ objective part (-Σ val_loss) | Δ clients' part | Δ reward |")
        print("| --- | --- | --- | --- | --- |")
        for label in sorted(policies):
            if label == args.reference:
                continue
            mine = {seed: parts(run) for seed, run in by_seed(policies[label], label).items()}
            shared = sorted(set(mine) & set(reference))
            diverged = [s for s in shared if not all(map(math.isfinite, (*mine[s], *reference[s])))]
            if diverged:
                seeds = ",".join(str(s) for s in diverged)
                print(f"| {label} | {','.join(str(s) for s in shared)} | " + " | ".join([f"n/a (seed {seeds}: a non-finite round reward)"] * 3) + " |")
                continue
            cells = []
            for pick in (lambda p: p[0], lambda p: p[1], lambda p: p[0] + p[1]):
                d = paired_difference({s: pick(v) for s, v in mine.items()}, {s: pick(v) for s, v in reference.items()})
                cells.append(f"{d.mean:+.3f} {format_interval(d.low, d.high, signed=True)}{'' if d.verdict != 'significant' else ' *'}")
            print(f"| {label} | {','.join(str(s) for s in sorted(set(mine) & set(reference)))} | " + " | ".join(cells) + " |")
    print("\n* significant: the interval excludes 0.")
    return 0


if __name__ == "__main__":
    run_script(main, "reward_parts")
