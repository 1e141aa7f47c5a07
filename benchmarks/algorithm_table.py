"""The label-skew study's table and plot (`fedsim sweep scenarios/label_skew.yaml`), paired over seeds.

For every task (the sweep's `name`) and algorithm (`algorithm.name`): the final accuracy (the last round,
on the whole test set) as the mean over seeds with its 95% Student t interval, the paired difference from
FedAvg over seeds with its interval and verdict (fedsim.stats.paired_difference), the best round's
accuracy, MB uploaded in all (control variates included) and their share that was control variates,
and the task's majority-class accuracy on the test set (what a model that learned nothing but the
prior reaches). The plot: accuracy against cumulative MB uploaded, mean over seeds per round, one panel
per task.

    .venv/bin/python benchmarks/algorithm_table.py runs/label_skew --plot benchmarks/figures
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from fedsim.collect import find_finished_runs
from fedsim.stats import format_interval, mean_ci, paired_difference
from fedsim.types import FedsimError, run_script

REFERENCE = "fedavg"


def majority_accuracy(config: dict) -> float:
    from fedsim.config import DataConfig
    from fedsim.data import load_corpus

    fields = {k.removeprefix("data."): v for k, v in config.items() if k.startswith("data.") and "." not in k.removeprefix("data.")}
    labels = config.get("data.labels")
    if labels is None:  # flattened mapping: data.labels.<group> -> list
        groups = {k.removeprefix("data.labels."): v for k, v in config.items() if k.startswith("data.labels.")}
        labels = groups or None
    fields["labels"] = labels
    corpus = load_corpus(DataConfig(**{k: v for k, v in fields.items() if k in DataConfig.model_fields}))
    return float(np.bincount(corpus.test.labels).max() / len(corpus.test.labels))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", help="the sweep's --out directory (fedsim sweep scenarios/label_skew.yaml)")
    parser.add_argument("--plot", help="directory for label_skew.png (accuracy against MB uploaded)")
    args = parser.parse_args(argv)
    if not Path(args.sweep_dir).is_dir():
        raise FedsimError(f"{args.sweep_dir}: not a directory; expected the --out directory of `fedsim sweep scenarios/label_skew.yaml`")
    runs = find_finished_runs(args.sweep_dir)
    if not runs:
        raise FedsimError(f"{args.sweep_dir}: no finished runs there; expected the --out directory of `fedsim sweep scenarios/label_skew.yaml`")
    groups: dict[str, dict[str, dict[int, object]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        groups[str(run.config["name"])][str(run.config["algorithm.name"])][int(run.config["seed"])] = run
    for task, methods in groups.items():
        reference = methods.get(REFERENCE)
        if reference is None:
            raise FedsimError(
                f"task {task}: no {REFERENCE} runs to compare with; found {', '.join(sorted(methods))} (the sweep needs algorithm.name {REFERENCE})"
            )
        any_run = next(iter(reference.values()))
        print(f"\n### {task}: majority-class accuracy {majority_accuracy(any_run.config):.3f}, {any_run.rounds[-1]['eval_examples']} test examples\n")
        print("| algorithm | seeds | final acc [95% CI] | per seed | Δ vs fedavg, paired [95% CI] | verdict | best round acc | MB up | of which control |")
        print("|---|---|---|---|---|---|---|---|---|")
        ref_final = {s: r.rounds[-1]["accuracy"] for s, r in reference.items()}
        for method, seeds in methods.items():
            final = {s: r.rounds[-1]["accuracy"] for s, r in seeds.items()}
            ci = mean_ci(final.values())
            best = np.mean([max(row["accuracy"] for row in r.rounds) for r in seeds.values()])
            mb = np.mean([r.summary["total_bytes_up"] / 1e6 for r in seeds.values()])
            control = np.mean([r.summary.get("total_bytes_up_control", 0) / max(r.summary["total_bytes_up"], 1) for r in seeds.values()])
            if method == REFERENCE:
                delta, verdict = "(reference)", ""
            else:
                diff = paired_difference(final, ref_final)
                delta, verdict = f"{diff.mean:+.3f} {format_interval(diff.low, diff.high, 3, signed=True)}", diff.verdict
            print(
                f"| {method} | {len(seeds)} | {ci.mean:.3f} {format_interval(ci.low, ci.high, 3)} | {' / '.join(f'{final[k]:.3f}' for k in sorted(final))} | {delta} | {verdict} | {best:.3f} | {mb:.1f} | {control:.0%} |"
            )
    if args.plot:
        plot(groups, Path(args.plot))
    return 0


def plot(groups, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4.0), squeeze=False)
    for ax, (task, methods) in zip(axes[0], groups.items()):
        for method, seeds in methods.items():
            mb = np.mean([[row["cum_bytes_up"] / 1e6 for row in r.rounds] for r in seeds.values()], axis=0)
            acc = np.array([[row["accuracy"] for row in r.rounds] for r in seeds.values()])
            ax.plot(mb, acc.mean(0), marker="o", markersize=3, label=method, linewidth=2 if method == REFERENCE else 1.4)
        ax.set_title(f"{task} (Dirichlet 0.1, 20 clients)")
        ax.set_xlabel("MB uploaded (cumulative, mean over seeds)")
        ax.set_ylabel("test accuracy, mean of 3 seeds")
        ax.grid(alpha=0.3)
    axes[0][0].legend(frameon=False)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "label_skew.png", dpi=130)
    print(f"\nplot: {out_dir / 'label_skew.png'}")


if __name__ == "__main__":
    run_script(main, "algorithm_table")
