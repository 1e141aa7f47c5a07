"""The policy comparison's table, paired over seeds: final accuracy, bytes to a fixed target, energy.

Reads a finished sweep directory (`fedsim sweep scenarios/policy_compare.yaml`) and prints markdown:
one table per SNR (``--split``, default ``channel.snr_db`` when it varies), one row per policy, with

- **final accuracy**: the last round's accuracy, mean over seeds and its 95% Student t interval
  (n - 1 dof). The header says what that round was evaluated on: the whole test set when the
  runs set ``data.eval_full_final: true`` (fedsim's default, also for a config without the field)
  or ``data.eval_samples: null`` (every round), else the per-round subset;
- **Δ vs the reference** (``--reference``, default ``fixed-8``): the paired mean difference over
  seeds, mean_s(acc_s - ref_s), with its paired 95% t-interval and "significant" iff the interval
  excludes 0. Seeds share partitions and channel draws, so seed s of a policy is compared with
  seed s of the reference (fedsim.stats.paired_difference); ``(n=k)`` when it pairs fewer seeds than
  the row or the reference has, whose means then cover other seeds;
- **MB to target**: cumulative upload at the first round whose accuracy reached ``--target``
  (a fixed accuracy, default 0.4, chosen per study and not from these results). A seed that never
  reached it counts as +inf: the median over seeds is inf when half or more never did, the count
  of never-seeds and the reached fraction are printed, and the paired Δ MB uses only seeds where
  both policy and reference reached it (fedsim.stats.target_summary, paired_to_target); the seeds it
  leaves out (only one of the two reached it, or neither) are listed under the table;
- energy (Σ energy_j, J, mean over seeds), mean rank, updates dropped / selected;
- when the runs record a reward (rounds.csv ``reward`` summed over the episode, or a summary field):
  the mean episode reward and its paired Δ vs the reference. An episode with a non-finite round reward
  (a diverged validation loss) is nan, and the row says which seeds. Rewards compare only under one
  reward configuration: runs scored with different ones (ppo's and airllm's ``policy.reward``, the
  ``RewardConfig()`` defaults for the other policies) are refused.

Any other field that varies across the runs gets its own table, never averaged over silently.
The same report grouped by a grid field instead of the policy is ``benchmarks/snr_table.py``.

    .venv/bin/python benchmarks/policy_table.py runs/policy_compare --target 0.4
    .venv/bin/python benchmarks/policy_table.py runs/policy_compare --reference fixed-2 --split channel.snr_db
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

from fedsim.collect import FinishedRun, RunMetrics, by_seed, episode_reward, find_finished_runs, policy_label, run_metrics, varying_fields
from fedsim.stats import confidence_level, format_confidence, format_interval, mean_ci, paired_difference, paired_to_target, target_summary
from fedsim.types import FedsimError

POLICY = "policy"  # the grouping by policy label (policy.name, and the rank of a fixed policy)
DEFAULT_TARGET = 0.4
DEFAULT_REFERENCE = "fixed-8"
# RewardConfig fields that are a learning signal only: the `reward` a run records does not include them (policies/common.py).
LEARNING_ONLY_REWARD_FIELDS = {"objective_credit"}


def fmt_value(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def short(field: str) -> str:
    return field.rsplit(".", 1)[-1]


def _sort_key(label: str):
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def _is_policy_field(field: str) -> bool:
    # A sweep that zips whole policy blocks lists the field "policy" in its manifest.
    return field == "policy" or field.startswith("policy.")


class Labeller:
    """Labels a run for one role (POLICY or a field name, plus the fields listed in `rest`)."""

    def __init__(self, runs: list[FinishedRun], fields: list[str], role: str | None, rest: list[str]):
        self.role, self.rest = role, rest
        self.policy_extra: list[str] = []
        if role == POLICY or POLICY in rest:
            # Policy fields beyond name and rank (a checkpoint, adalora's schedule) mostly follow the
            # name; they enter the label where runs that would share one differ in them, on the same seed or not
            # (a label's seeds are pooled: two configurations on seeds 0-2 and 3-5 would be averaged as one).
            labels = defaultdict(set)
            for run in runs:
                others = tuple(json.dumps(run.config.get(f), sort_keys=True) for f in fields if not _is_policy_field(f))
                labels[(policy_label(run.config), *others)].add(tuple(str(run.config.get(f)) for f in fields if _is_policy_field(f)))
            if any(len(v) > 1 for v in labels.values()):
                self.policy_extra = [f for f in fields if _is_policy_field(f) and f not in ("policy", "policy.name", "policy.rank", "policy.ranks")]

    def _policy(self, config: dict) -> str:
        extra = [f"{short(f)}={fmt_value(config[f])}" for f in self.policy_extra if config.get(f) is not None]
        return " ".join([policy_label(config), *extra])

    def part(self, config: dict, role: str) -> str:
        if role == POLICY:
            return self._policy(config)
        return fmt_value(config.get(role))

    def parts(self, run: FinishedRun) -> tuple[tuple[str, str], ...]:
        roles = ([self.role] if self.role else []) + self.rest
        return tuple((role, self.part(run.config, role)) for role in roles)

    def __call__(self, run: FinishedRun) -> str:
        return ", ".join(value for _, value in self.parts(run))


def title_of(parts: tuple[tuple[str, str], ...]) -> str:
    """'SNR -5 dB, policy fixed-2, alpha=0.1' for a table's key."""
    words = []
    for role, value in parts:
        if role == "channel.snr_db":
            words.append(f"SNR {value} dB")
        elif role == POLICY:
            words.append(f"policy {value}")
        else:
            words.append(f"{short(role)}={value}")
    return ", ".join(words) or "all runs"


def sweep_order(root: Path, runs: list[FinishedRun]) -> list[FinishedRun]:
    """The runs in the sweep file's order (so the policies appear as listed there), else by path."""
    manifest = root / "sweep.json"
    if not manifest.is_file():
        return runs
    order = {point["dir"]: i for i, point in enumerate(json.loads(manifest.read_text()).get("points", []))}
    return sorted(runs, key=lambda r: (order.get(r.name, len(order)), str(r.path)))


def _match_reference(reference: str, labels: list[str]) -> str | None:
    if reference in labels:
        return reference
    try:
        wanted = float(reference)
    except ValueError:
        return None
    return next((label for label in labels if _sort_key(label)[0] == 0 and float(label) == wanted), None)


def _eval_note(metrics: list[RunMetrics]) -> str:
    """What the final round was evaluated on, from the runs themselves (data.eval_full_final, data.eval_samples,
    eval_examples; a config without a field ran at its default)."""
    whole = {m.final_whole_test_set for m in metrics}
    examples = sorted({m.final_eval_examples for m in metrics if m.final_eval_examples is not None})
    counts = "/".join(str(e) for e in examples) or "?"
    if whole == {True} and all(m.eval_samples is None for m in metrics):
        return f"last round, evaluated on the whole test set ({counts} examples), as every round is (data.eval_samples: null)"
    if whole == {True}:
        return (
            f"last round, evaluated on the whole test set ({counts} examples; data.eval_full_final: true; "
            "earlier rounds, and so a target first reached before the last round, use the per-round subset)"
        )
    if whole == {False}:
        return (
            f"last round, evaluated on the {counts}-example per-round subset (data.eval_full_final: false; "
            "set it to true to score the final round on the whole test set)"
        )
    return f"last round, MIXED evaluation sets across runs ({counts} examples): not comparable"


def _num(value: float, digits: int, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "never"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _mean_cell(values: list[float], digits: int, confidence: float) -> str:
    ci = mean_ci(values, confidence)
    return f"{_num(ci.mean, digits)} {format_interval(ci.low, ci.high, digits)}".strip()


def _diff_cell(diff, digits: int, seeds: int | None = None) -> str:
    """A paired difference; `(n=k)` when it pairs fewer seeds than `seeds` (the more of the row's and the reference's)."""
    if diff.n == 0:
        return diff.verdict
    interval = format_interval(diff.low, diff.high, digits, signed=True)
    fewer = f" (n={diff.n})" if seeds is not None and diff.n < seeds else ""
    return f"{_num(diff.mean, digits, signed=True)} {interval}{fewer}"


def group_table(
    members: dict[str, dict],
    reference: str,
    target: float,
    group_title: str,
    confidence: float = 0.95,
    reference_name: str | None = None,
) -> list[str]:
    """Markdown rows for one table: `members` is {group label: {seed: RunMetrics}} in display order."""
    name = reference_name or reference
    with_reward = any(m.reward is not None for seeds in members.values() for m in seeds.values())
    pct = format_confidence(confidence)
    header = [
        group_title,
        "seeds",
        f"final acc [{pct} CI]",
        f"Δ acc vs {name} [{pct} CI]",
        "Δ acc verdict",
        f"MB to {target:g}: median",
        "reached",
        f"Δ MB vs {name}, both reached [{pct} CI]",
        "energy J",
        "mean rank",
        "dropped",
    ]
    if with_reward:
        header += [f"reward [{pct} CI]", f"Δ reward vs {name} [{pct} CI]", "Δ reward verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    notes: list[str] = []
    ref = members[reference]
    for label, seeds in members.items():
        ms = list(seeds.values())
        costs = {s: m.mb_to_target for s, m in seeds.items()}
        summary = target_summary(costs.values())
        reached = f"{summary.reached}/{summary.n}" + (f" (never ×{summary.never})" if summary.never else "")
        row = [label, ",".join(fmt_value(s) for s in sorted(seeds)), _mean_cell([m.final_accuracy for m in ms], 3, confidence)]
        if label == reference:
            row += ["(reference)", "", _num(summary.median, 3), reached, "(reference)"]
        else:
            acc = paired_difference({s: m.final_accuracy for s, m in seeds.items()}, {s: m.final_accuracy for s, m in ref.items()}, confidence)
            mb = paired_to_target(costs, {s: m.mb_to_target for s, m in ref.items()}, confidence)
            mb_cell = _diff_cell(mb.difference, 3)
            if mb.difference.n:
                mb_cell += f" {mb.difference.verdict} (n={mb.difference.n})"
            left_out = [(k, what) for k, what in ((mb.only_a, f"only {label} reached it"), (mb.only_b, f"only {name} did"), (mb.neither, "neither did")) if k]
            if left_out:
                shared = sum(k for k, _ in left_out)
                notes.append(
                    f"- {label}: Δ MB vs {name} leaves out {shared} shared seed{'s' if shared != 1 else ''} where not both reached "
                    f"{target:g}: " + ", ".join(f"{k} where {what}" for k, what in left_out)
                )
            row += [_diff_cell(acc, 3, max(len(seeds), len(ref))), acc.verdict, _num(summary.median, 3), reached, mb_cell]
        row += [
            _num(sum(m.energy_j for m in ms) / len(ms), 3),
            _num(sum(m.mean_rank for m in ms) / len(ms), 2),
            f"{sum(m.dropped for m in ms)}/{sum(m.selected for m in ms)}",
        ]
        if with_reward:
            rewards = {s: m.reward for s, m in seeds.items() if m.reward is not None}
            ref_rewards = {s: m.reward for s, m in ref.items() if m.reward is not None}
            non_finite = _non_finite(rewards)
            if non_finite:
                row.append(f"nan ({non_finite})")
            else:
                row.append(_mean_cell(list(rewards.values()), 3, confidence) if rewards else "-")
            if label == reference:
                row += ["(reference)", ""]
            elif non_finite or _non_finite(ref_rewards):
                row += ["nan", f"n/a (a non-finite reward: {non_finite or f'{name} ' + _non_finite(ref_rewards)})"]
            else:
                diff = paired_difference(rewards, ref_rewards, confidence)
                row += [_diff_cell(diff, 3, max(len(rewards), len(ref_rewards))), diff.verdict]
        lines.append("| " + " | ".join(row) + " |")
    return lines + ([""] + notes if notes else [])


def _non_finite(rewards: dict) -> str:
    """'seeds 1,3 non-finite' for the seeds whose episode reward is not finite, '' when all are."""
    bad = [fmt_value(s) for s in sorted(rewards) if not math.isfinite(rewards[s])]
    return f"seed{'s' if len(bad) > 1 else ''} {','.join(bad)} non-finite" if bad else ""


def _reward_config(config: dict) -> dict:
    """The reward configuration a run's recorded `reward` was computed with (policies.base.RankPolicy.reward): its
    policy.reward fields over the RewardConfig() defaults, which the policies without a reward section use."""
    from policies.common import RewardConfig

    effective = RewardConfig().model_dump()
    prefix = "policy.reward."
    for key, value in config.items():
        if key.startswith(prefix):
            effective[key[len(prefix) :]] = value  # a mapping value (objective_credit by SNR) is flattened into several keys
    return {k: _canonical(v) for k, v in effective.items() if k.split(".")[0] not in LEARNING_ONLY_REWARD_FIELDS}


def _canonical(value):
    # YAML gives [[0, 0.81], ...] where the defaults hold [(0.0, 0.81), ...]: one value, two spellings.
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def check_reward_configs(groups: dict[str, list[FinishedRun]], where: str) -> None:
    """One reward configuration across the runs of a table that record a reward; else a one-line FedsimError."""
    seen: tuple[str, dict] | None = None
    for label, runs in groups.items():
        for run in runs:
            if episode_reward(run) is None:
                continue
            config = _reward_config(run.config)
            if seen is None:
                seen = (label, config)
                continue
            differ = sorted(k for k in set(config) | set(seen[1]) if config.get(k) != seen[1].get(k))
            if differ:
                raise FedsimError(
                    f"{where}: the rewards of {seen[0]} and {label} were computed with different reward settings "
                    f"({', '.join('policy.reward.' + k for k in differ)}), so they do not compare; allowed: runs scored alike "
                    "(a policy without a reward section is scored with RewardConfig()'s defaults, policies/common.py)"
                )


def report(
    root: str | Path,
    group: str,
    split: str | None,
    reference: str | None,
    target: float,
    confidence: float = 0.95,
    default_reference=None,
) -> str:
    """The markdown report: one table per value of `split` (+ any other varying field), rows = `group` values.

    `group` / `split` are POLICY or a dotted scenario field. `default_reference(labels)` picks the
    reference when `reference` is None; it must return a label or raise.
    """
    root = Path(root)
    runs = sweep_order(root, find_finished_runs(root))
    if not runs:
        raise FedsimError(f"{root}: no finished runs (no run directory with summary.json)")
    fields = varying_fields(root, runs)
    policy_varies = any(_is_policy_field(f) for f in fields)

    def roles_of(name):
        return {f for f in fields if _is_policy_field(f)} if name == POLICY else {name}

    if group != POLICY and group not in fields:
        raise FedsimError(f"--by {group!r}: not a field that varies across these runs; varying: {', '.join(fields) or '(none)'}")
    if split is not None and split != POLICY and split not in fields:
        raise FedsimError(f"--split {split!r}: not a field that varies across these runs; varying: {', '.join(fields) or '(none)'}")
    used = roles_of(group) | (roles_of(split) if split else set())
    rest = [f for f in fields if f not in used and not _is_policy_field(f)]
    if policy_varies and POLICY not in (group, split):
        rest = [POLICY, *rest]
    group_label = Labeller(runs, fields, group, [])
    split_label = Labeller(runs, fields, split, rest)

    tables: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        tables[split_label.parts(run)][group_label(run)].append(run)

    group_title = "policy" if group == POLICY else short(group)
    out = [f"{len(runs)} finished runs in {root}", ""]
    metrics = [run_metrics(r, target) for r in runs]
    reward_note = (
        " Reward: rounds.csv reward summed over the episode, mean over seeds; nan when a round's is not finite (a diverged run)."
        if any(m.reward is not None for m in metrics)
        else ""
    )
    out.append(
        f"Final accuracy: {_eval_note(metrics)}. "
        f"Δ: paired over seeds (the seeds share partitions and channel draws): mean over shared seeds of "
        f"(row - reference), {format_confidence(confidence)} Student t interval with n-1 dof; significant iff it excludes 0. "
        f"MB to {target:g}: cumulative upload at the first round with accuracy >= {target:g} (a fixed target, "
        f"--target), never = +inf; median over seeds (inf when half or more never reach it); Δ MB over the seeds "
        f"where both reached it. Energy: Σ energy_j (J), mean over seeds. Dropped: updates lost / selected, all seeds.{reward_note}"
    )
    first_seen: dict[str, int] = {}
    for key in tables:
        for _, value in key:
            first_seen.setdefault(value, len(first_seen))

    def table_order(key):
        # Numbers ascending (SNR -5 before 15), names as the sweep file lists them.
        return tuple((0, float(v), 0) if _sort_key(v)[0] == 0 else (1, 0.0, first_seen[v]) for _, v in key)

    for key in sorted(tables, key=table_order):
        groups = tables[key]
        labels = sorted(groups, key=_sort_key) if group != POLICY else list(groups)
        chosen = _match_reference(reference, labels) if reference is not None else default_reference(labels)
        if chosen is None:
            raise FedsimError(f"--reference {reference!r}: not among {', '.join(labels)} ({title_of(key)})")
        members = {label: {s: run_metrics(r, target) for s, r in by_seed(groups[label], f"{title_of(key)}, {label}").items()} for label in labels}
        check_reward_configs({label: groups[label] for label in labels}, title_of(key))
        shown = chosen if group == POLICY else f"{short(group)}={chosen}"
        out += ["", f"### {title_of(key)} (reference {shown})", ""]
        out += group_table(members, chosen, target, group_title, confidence, shown)
    return "\n".join(out)


def policy_default_reference(labels: list[str]) -> str:
    if DEFAULT_REFERENCE in labels:
        return DEFAULT_REFERENCE
    raise FedsimError(f"no {DEFAULT_REFERENCE} runs to compare against; pass --reference, one of: {', '.join(labels)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir")
    parser.add_argument("--reference", help=f"policy the others are compared with, paired over seeds (default {DEFAULT_REFERENCE})")
    parser.add_argument(
        "--target",
        type=float,
        default=DEFAULT_TARGET,
        help=f"fixed accuracy target for 'MB to target' (default {DEFAULT_TARGET}); choose it per study, not from the results",
    )
    parser.add_argument("--split", help="one table per value of this field (default channel.snr_db when it varies)")
    parser.add_argument("--confidence", type=confidence_level, default=0.95, help="confidence level of the intervals (default 0.95)")
    args = parser.parse_args(argv)
    try:
        runs_fields = varying_fields(Path(args.sweep_dir), find_finished_runs(args.sweep_dir))
        split = args.split or ("channel.snr_db" if "channel.snr_db" in runs_fields else None)
        print(report(args.sweep_dir, POLICY, split, args.reference, args.target, args.confidence, policy_default_reference))
    except FedsimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
