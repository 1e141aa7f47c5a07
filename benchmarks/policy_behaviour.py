"""Does a rank policy follow the channel? Per policy, from a finished comparison sweep (policy_compare.yaml):

- **channel-following**: within each run, the Spearman correlation between a client's instantaneous
  SNR (large-scale snr_db + 10 log10 |h|², the channel the policy acted on) and its chosen mean rank,
  over every client-round of the run; printed as the mean and the minimum over runs, with the mean
  rank at each large-scale SNR, then per SNR with the runs at or above `--threshold` (issue 15's 0.6); a run
  whose ranks or SNRs are all equal has no correlation and is counted apart;
- **dominance**: at each SNR, whether another policy has both a higher mean final accuracy and fewer
  MB uploaded, which would make this policy a bad buy; the two are compared on the seeds both have
  (as pandas aligns two series on their index), named where that is fewer than either has;
- **per-layer rank profile**: a heatmap per policy, adapted layer x SNR, of the mean rank over every
  client-round at that SNR (``--plot DIR``: rank_profile_<policy>.png and .svg), and the coefficient of
  variation of that profile across layers (0: every layer gets the same rank).

    .venv/bin/python benchmarks/policy_behaviour.py runs/policy_compare --plot runs/policy_compare/plots
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from fedsim.collect import check_one_policy_config, find_finished_runs, policy_label, run_metrics
from fedsim.plots import _layer_label, _save, _style
from fedsim.types import FedsimError, run_script


def client_rows(run) -> list[dict]:
    with open(run.path / "clients.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def run_behaviour(run) -> dict:
    rows = client_rows(run)
    ranks = np.array([[float(r) for r in row["ranks"].split()] for row in rows])
    snr = np.array([float(row["snr_db"]) + 10 * np.log10(max(float(row["fading_gain"]), 1e-12)) for row in rows])
    mean_rank = ranks.mean(axis=1)
    rho = spearmanr(snr, mean_rank).statistic if mean_rank.std() > 0 and snr.std() > 0 else float("nan")
    return {"rho": rho, "ranks": ranks}


def spearman_cell(rhos: list[float], threshold: float) -> str:
    """'mean (min), k/n >= threshold', with the runs that have no correlation (constant ranks or SNR) named apart."""
    finite = [r for r in rhos if np.isfinite(r)]
    if not finite:
        return f"n/a ({len(rhos)} without a correlation)" if rhos else "-"
    cell = f"{np.mean(finite):.2f} ({np.min(finite):.2f}), {sum(r >= threshold for r in finite)}/{len(finite)}"
    return cell + (f", {len(rhos) - len(finite)} without" if len(finite) < len(rhos) else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir")
    parser.add_argument("--by", default="channel.snr_db", help="the grid field the channel varies by (default channel.snr_db)")
    parser.add_argument("--plot", metavar="DIR", help="write rank_profile_<policy>.png and .svg heatmaps there")
    parser.add_argument("--threshold", type=float, default=0.6, help="count the runs whose Spearman reaches this (default 0.6)")
    args = parser.parse_args(argv)
    runs = find_finished_runs(args.sweep_dir)
    if not runs:
        raise FedsimError(f"{args.sweep_dir}: no finished runs")
    groups: dict[tuple[str, float], list] = defaultdict(list)
    for run in runs:
        groups[(policy_label(run.config), run.config.get(args.by))].append(run)
    for policy in {p for p, _ in groups}:
        check_one_policy_config([run for (p, _), members in groups.items() if p == policy for run in members], policy, args.sweep_dir)
    for (policy, level), members in groups.items():  # averaging two configurations under one label would hide both
        seeds = [run.config.get("seed") for run in members]
        if len(set(seeds)) < len(seeds):
            twice = next(s for s in seeds if seeds.count(s) > 1)
            raise FedsimError(
                f"{args.sweep_dir}: {policy} at {args.by}={level} has seed {twice} twice, so its runs differ in another "
                "field; give each configuration its own directory"
            )
    policies = sorted({p for p, _ in groups})
    levels = sorted({v for _, v in groups})
    layers = [_layer_label(n) for n in runs[0].summary.get("layers", [])]

    print(f"Channel-following: Spearman(instantaneous SNR, client mean rank) within each run; mean rank per {args.by}.\n")
    print(f"| policy | {' | '.join(f'{args.by}={v}: mean rank' for v in levels)} | Spearman mean (min) over runs | layer profile CV |")
    print("|---|" + "---|" * (len(levels) + 2))
    profiles, by_level = {}, {}
    for policy in policies:
        rhos, cells, matrix = [], [], []
        for level in levels:
            behaviours = [run_behaviour(run) for run in groups.get((policy, level), [])]
            by_level[policy, level] = [b["rho"] for b in behaviours]
            rhos += by_level[policy, level]
            ranks = np.concatenate([b["ranks"] for b in behaviours]) if behaviours else np.zeros((0, len(layers)))
            cells.append(f"{ranks.mean():.2f}" if len(ranks) else "-")
            matrix.append(ranks.mean(axis=0) if len(ranks) else np.full(len(layers), np.nan))
        profiles[policy] = np.array(matrix).T  # [layers, levels]
        finite = [r for r in rhos if np.isfinite(r)]
        rho_cell = f"{np.mean(finite):.2f} ({np.min(finite):.2f})" if finite else "n/a (constant rank)"
        profile = np.nanmean(profiles[policy], axis=1)
        cv = float(np.std(profile) / np.mean(profile)) if np.mean(profile) > 0 else float("nan")
        print(f"| {policy} | {' | '.join(cells)} | {rho_cell} | {cv:.2f} |")

    print(f"\nSpearman within a run, per {args.by}: mean (min) over runs; runs with Spearman >= {args.threshold:g} of those where it is defined.\n")
    print(f"| policy | {' | '.join(f'{args.by}={v}' for v in levels)} |")
    print("|---|" + "---|" * len(levels))
    for policy in policies:
        print(f"| {policy} | {' | '.join(spearman_cell(by_level.get((policy, v), []), args.threshold) for v in levels)} |")

    print(
        f"\nDominance: a policy is dominated at a {args.by} when another has a higher mean final accuracy and fewer MB up "
        "(means over the seeds both have; the figures shown: means over all the policy's seeds).\n"
    )
    for level in levels:
        figures = {}  # policy -> {seed: (final accuracy, MB up)}
        for policy in policies:
            runs_here = groups.get((policy, level), [])
            if runs_here:
                figures[policy] = {run.config.get("seed"): (run_metrics(run, 1.0).final_accuracy, run.rounds[-1]["cum_bytes_up"] / 1e6) for run in runs_here}
        for policy, mine in sorted(figures.items()):
            by, apart = [], []
            for other, theirs in sorted(figures.items()):
                shared = sorted(set(mine) & set(theirs), key=str)
                if other == policy:
                    continue
                if not shared:
                    apart.append(other)
                    continue
                acc, mb = (float(np.mean([mine[s][i] for s in shared])) for i in (0, 1))
                other_acc, other_mb = (float(np.mean([theirs[s][i] for s in shared])) for i in (0, 1))
                if other_acc > acc and other_mb < mb:
                    fewer = len(shared) < max(len(mine), len(theirs))
                    by.append(other + (f" (on seeds {','.join(str(s) for s in shared)})" if fewer else ""))
            acc, mb = (float(np.mean([v[i] for v in mine.values()])) for i in (0, 1))
            verdict = f"dominated by {', '.join(by)}" if by else "not dominated"
            if apart:
                verdict += f"; no seed shared with {', '.join(apart)}"
            print(f"- {args.by}={level}: {policy}: accuracy {acc:.3f}, {mb:.2f} MB: {verdict}")

    if args.plot:
        out = Path(args.plot)
        out.mkdir(parents=True, exist_ok=True)
        plt = _style()
        max_rank = runs[0].config.get("adapter.max_rank") or 8
        for policy, matrix in profiles.items():
            fig, ax = plt.subplots(figsize=(1.2 * len(levels) + 2.8, 0.28 * len(layers) + 1.4))
            image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=max_rank, interpolation="nearest")
            ax.grid(False)
            ax.set_yticks(range(len(layers)), layers, fontsize=8)
            ax.set_xticks(range(len(levels)), [f"{v:g}" for v in levels])
            ax.set_xlabel(f"{args.by} (dB)" if "snr" in args.by else args.by)
            ax.set_ylabel("adapted layer")
            for (i, j), value in np.ndenumerate(matrix):
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="white" if value < 0.6 * max_rank else "black")
            ax.set_title(f"{policy}: mean rank per layer, every client-round", fontsize=10)
            fig.colorbar(image, ax=ax, pad=0.02).set_label("mean rank")
            fig.tight_layout()
            paths = _save(fig, out, f"rank_profile_{policy}")
            plt.close(fig)
            print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_script(main, "policy_behaviour")
