"""Fit the objective credit c(r): what a delivered update of rank r is worth to the shared objective.

The learning policies can add c to their learning signal (`policies.common.RewardConfig.objective_credit`); the
round reward they are scored on is unchanged. The runs are fixed ranks in the policy comparison's setup at the
training SNR levels and seeds (`scenarios/objective_calibration.yaml`). For each run, over the episode:

    O = -Σ_t val_loss_t                  the objective part of the episode reward
    N = Σ_t mean_k delivered_k           the updates that got through (mean over a round's clients, as in R)

and the model, by least squares over every run, is

    O = a_(level, seed) + c(r) · N

a_ is what the episode scores with nothing delivered (one per SNR level and seed: runs of one group share the
partition, the fades and the validation split), c(r) one per fixed rank. Since R = objective + mean_k term_k,
crediting each delivered decision c(r) makes Σ_t mean_k (term_k + c(r_k) delivered_k) the episode reward up to
a_. Standard errors are the ordinary least-squares ones. The script prints the curve as the scenario line to use.

With `--anchors s_1 ... s_m` (dB) the credit also depends on the SNR level s: c(r, s) is linear in s between
the anchors and constant beyond them, c(r, s) = Σ_j w_j(s) c_j(r) with w_j the piecewise-linear "hat" weights
of the anchors, one curve c_j per anchor (m · ranks credits instead of ranks). The script then prints
{s_j: c_j}, the form `objective_credit` interpolates at each client's large-scale SNR, and the F test of the
anchored fit against the pooled one (a fit with more anchors should beat it by more than its added freedom).

    .venv/bin/python benchmarks/objective_credit.py runs/objective_calibration
    .venv/bin/python benchmarks/objective_credit.py runs/objective_calibration --levels -8 -2 2   (a regime alone)
    .venv/bin/python benchmarks/objective_credit.py runs/objective_calibration --anchors -8 2 20
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from fedsim.collect import FinishedRun, find_finished_runs, read_csv_rows
from fedsim.types import FedsimError, run_script


def episode_parts(run: FinishedRun) -> tuple[float, float]:
    """(O, N) of one run, as in the module docstring."""
    losses = [r.get("val_loss") for r in run.rounds]
    if not losses or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses):
        raise FedsimError(f"{run.path}: rounds.csv lacks val_loss in some rounds (run with data.validation_samples > 0)")
    per_round: dict[int, list[float]] = defaultdict(list)
    for row in read_csv_rows(run.path / "clients.csv"):
        per_round[int(row["round"])].append(float(row["delivered"]))
    return -float(sum(losses)), sum(float(np.mean(v)) for v in per_round.values())


def fit(points: list[tuple[object, int, float, float]], anchors: list[float] | None = None) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray, int]:
    """Least squares of O = a_group + c(rank, level) · N over points ((level, seed), rank, O, N), c one curve or one per
    anchor (module docstring): (ranks, c [ranks, anchors], standard errors like c, residuals, degrees of freedom)."""
    groups = sorted({p[0] for p in points}, key=str)
    ranks = sorted({p[1] for p in points})
    anchors = sorted(anchors) if anchors else [0.0]
    m = len(anchors)
    x = np.zeros((len(points), len(groups) + len(ranks) * m))
    y = np.array([p[2] for p in points])
    for i, (group, rank, _, delivered) in enumerate(points):
        x[i, groups.index(group)] = 1.0
        for j, weight in enumerate(np.interp(float(group[0]), anchors, row) for row in np.eye(m)):  # hat weights; 1 with no anchors
            x[i, len(groups) + ranks.index(rank) * m + j] = delivered * weight
    dof = len(points) - x.shape[1]
    if dof < 1 or np.linalg.matrix_rank(x) < x.shape[1]:
        raise FedsimError(
            f"{len(points)} runs cannot identify {len(groups)} group levels and {len(ranks) * m} rank credits"
            + (f" ({m} anchors: every anchor needs levels near it where the updates delivered vary with rank)" if m > 1 else "")
            + "; run the whole calibration sweep"
        )
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    sigma2 = float(((y - x @ coef) ** 2).sum()) / dof
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(x.T @ x)))
    shape = (len(ranks), m)
    return ranks, coef[len(groups) :].reshape(shape), se[len(groups) :].reshape(shape), y - x @ coef, dof


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="a finished sweep directory (scenarios/objective_calibration.yaml)")
    parser.add_argument("--split", default="channel.snr_db", help="the field that sets the SNR level (default channel.snr_db)")
    parser.add_argument("--levels", type=float, nargs="+", help="fit on these values of --split only (default: all)")
    parser.add_argument("--anchors", type=float, nargs="+", help="SNR anchors (dB, two or more): one curve per anchor, linear in between")
    args = parser.parse_args(argv)
    points = []
    max_ranks = set()
    for run in find_finished_runs(args.dir):
        if args.levels is not None and run.config.get(args.split) not in args.levels:
            continue
        if run.config.get("policy.name") != "fixed" or run.config.get("policy.rank") is None:
            raise FedsimError(
                f"{run.path}: policy {run.config.get('policy.name')!r}; the calibration needs fixed uniform ranks (policy: {{name: fixed, rank: r}})"
            )
        objective, delivered = episode_parts(run)
        points.append(((run.config.get(args.split), run.config.get("seed")), int(run.config["policy.rank"]), objective, delivered))
        max_ranks.add(int(run.config["adapter.max_rank"]))
    if not points:
        raise FedsimError(f"{args.dir}: no finished runs" + (f" at {args.split} in {args.levels}" if args.levels else ""))
    if len(max_ranks) != 1:
        raise FedsimError(f"{args.dir}: runs with different adapter.max_rank {sorted(max_ranks)}; calibrate one adapter at a time")
    max_rank = max_ranks.pop()
    if args.anchors is not None and (len(args.anchors) < 2 or len(set(args.anchors)) < len(args.anchors)):
        raise FedsimError(f"--anchors {args.anchors}: give two or more distinct SNRs in dB, e.g. --anchors -8 2 20")
    ranks, credit, se, residuals, dof = fit(points, args.anchors)
    anchors = sorted(args.anchors) if args.anchors else None
    print(f"{len(points)} runs, {len({p[0] for p in points})} groups ({args.split} x seed)\n")
    columns = [f"c(r) at {a:g} dB | s.e." for a in anchors] if anchors else ["credit c(r) per delivered update | s.e."]
    print(f"| rank | {' | '.join(columns)} | mean N |")
    print("| --- |" + " --- | --- |" * len(columns) + " --- |")
    for i, rank in enumerate(ranks):
        mean_n = np.mean([p[3] for p in points if p[1] == rank])
        cells = " | ".join(f"{c:.3f} | {s:.3f}" for c, s in zip(credit[i], se[i]))
        print(f"| {rank} | {cells} | {mean_n:.2f} |")
    print(f"\n| {args.split} | runs | residual O - fit: by rank {', '.join(map(str, ranks))} |")
    print("| --- | --- | --- |")
    levels = sorted({p[0][0] for p in points}, key=lambda v: (str(type(v)), v))
    for level in levels:
        cells = [[res for p, res in zip(points, residuals) if p[0][0] == level and p[1] == rank] for rank in ranks]
        shown = " / ".join(f"{np.mean(c):+.2f}" if c else "n/a" for c in cells)
        print(f"| {level} | {sum(p[0][0] == level for p in points)} | {shown} |")
    rss = float((residuals**2).sum())
    if anchors:
        *_, pooled, pooled_dof = fit(points)
        pooled_rss = float((pooled**2).sum())
        added = pooled_dof - dof
        f_stat = ((pooled_rss - rss) / added) / (rss / dof) if rss > 0 else float("inf")
        p_value = float(stats.f.sf(f_stat, added, dof))
        print(
            f"\nresidual sum of squares {rss:.3f} ({dof} dof); pooled curve {pooled_rss:.3f} ({pooled_dof} dof): F({added}, {dof}) = {f_stat:.2f}, p = {p_value:.2g}"
        )
    if ranks[0] != 0 or ranks[-1] != max_rank:
        raise FedsimError(f"ranks {ranks}: the curve needs rank 0 and rank {max_rank} (adapter.max_rank) among the fixed ranks")

    def curve(column: int) -> str:
        return "[" + ", ".join(f"[{rank / max_rank:g}, {c:.2f}]" for rank, c in zip(ranks, credit[:, column])) + "]"

    if anchors:
        print("\npolicy.reward.objective_credit: {" + ", ".join(f"{a:g}: {curve(j)}" for j, a in enumerate(anchors)) + "}")
    else:
        print(f"\npolicy.reward.objective_credit: {curve(0)}")
    return 0


if __name__ == "__main__":
    run_script(main, "objective_credit")
