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

With `--returns diminishing` the objective is concave in the updates that got through, each weighted by its rank:

    O = a_(level, seed) + γ · log(1 + Σ_t mean_k w(r_k) · delivered_k)      (for a fixed-rank run: γ · log(1 + w(r) N))

by nonlinear least squares (w = exp(θ) > 0; standard errors from the Jacobian, w's by the delta method). The
linear model reads "few updates got through" at a low level as "each was worth a lot", and credits high ranks
there for it, since a high fixed rank is what delivers few; this one separates what an update is worth from how
many others arrived. A client's credit is the marginal worth of its delivered update,

    c(r, s) = γ · w(r) / (1 + N_0(s))

evaluated where the episode's weighted count is N_0(s), the updates the lowest fixed rank (rank 0: the head
alone, which fits whenever anything does) got through at level s, each weighing 1 (w is near 1 at the ranks a
share policy sends, 0.8-1.2 over ranks 1-8 on the shipped calibration): an update sent within what fits gets
through as often. One curve per calibrated level, which `objective_credit` interpolates linearly in dB. The script
prints both models' residual sums of squares and BIC (n ln(RSS/n) + k ln n, k the fitted parameters).

    .venv/bin/python benchmarks/objective_credit.py runs/objective_calibration --returns diminishing
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import optimize, stats

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


def fit_diminishing(points: list[tuple[object, int, float, float]]) -> tuple[list[int], float, np.ndarray, float, np.ndarray, np.ndarray, int]:
    """Nonlinear least squares of O = a_group + γ · log(1 + w(rank) · N) over points ((level, seed), rank, O, N)
    (module docstring): (ranks, γ, w per rank, s.e. of γ, s.e. of w, residuals, degrees of freedom)."""
    groups = sorted({p[0] for p in points}, key=str)
    ranks = sorted({p[1] for p in points})
    group_of = np.array([groups.index(p[0]) for p in points])
    rank_of = np.array([ranks.index(p[1]) for p in points])
    y = np.array([p[2] for p in points])
    delivered = np.array([p[3] for p in points])
    n_groups = len(groups)

    def residuals(theta: np.ndarray) -> np.ndarray:
        return y - theta[group_of] - theta[n_groups] * np.log1p(np.exp(theta[n_groups + 1 :])[rank_of] * delivered)

    start = np.concatenate([[y[group_of == g].min() for g in range(n_groups)], [1.0], np.zeros(len(ranks))])
    result = optimize.least_squares(residuals, start, xtol=1e-14, ftol=1e-14, gtol=1e-14)
    dof = len(points) - len(start)
    jacobian = result.jac
    if dof < 1 or np.linalg.matrix_rank(jacobian) < len(start):
        raise FedsimError(
            f"{len(points)} runs cannot identify {n_groups} group levels, γ and {len(ranks)} rank weights under diminishing returns "
            "(each rank needs runs that deliver different numbers of updates); run the whole calibration sweep"
        )
    rss = float((result.fun**2).sum())
    covariance = np.linalg.inv(jacobian.T @ jacobian) * (rss / dof)
    weights = np.exp(result.x[n_groups + 1 :])
    se = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    return ranks, float(result.x[n_groups]), weights, float(se[n_groups]), weights * se[n_groups + 1 :], result.fun, dof


def bic(residuals: np.ndarray, n_params: int) -> float:
    """Schwarz's criterion for a least-squares fit with Gaussian errors: n ln(RSS/n) + k ln n (lower is better)."""
    n = len(residuals)
    return n * math.log(max(float((residuals**2).sum()), 1e-300) / n) + n_params * math.log(n)


def diminishing_report(points: list[tuple[object, int, float, float]], max_rank: int) -> None:
    """Print the diminishing-returns fit, its comparison with the linear pooled one, and the by-level credit."""
    ranks, gamma, weights, gamma_se, weights_se, residuals, dof = fit_diminishing(points)
    n_params = len(points) - dof
    *_, linear, linear_dof = fit(points)
    print(f"{len(points)} runs, {len({p[0] for p in points})} groups; O = a + γ · log(1 + w(r) · N): γ = {gamma:.3f} (s.e. {gamma_se:.3f})\n")
    print("| rank | w(r) | s.e. | mean N |")
    print("| --- | --- | --- | --- |")
    for rank, w, w_se in zip(ranks, weights, weights_se):
        print(f"| {rank} | {w:.3f} | {w_se:.3f} | {np.mean([p[3] for p in points if p[1] == rank]):.2f} |")
    print(
        f"\nresidual sum of squares {float((residuals**2).sum()):.3f} ({dof} dof), BIC {bic(residuals, n_params):.1f}; "
        f"linear pooled curve {float((linear**2).sum()):.3f} ({linear_dof} dof), BIC {bic(linear, len(points) - linear_dof):.1f}"
    )
    levels = sorted({p[0][0] for p in points})
    low = 1 if len(ranks) > 2 else 0  # the trade above the lowest non-zero rank, where there is one
    print(f"\n| level | N_0 (rank-{ranks[0]} runs) | credit c(r) at ranks {', '.join(map(str, ranks))} | c({ranks[-1]}) - c({ranks[low]}) |")
    print("| --- | --- | --- | --- |")
    curves = {}
    for level in levels:
        n0 = float(np.mean([p[3] for p in points if p[0][0] == level and p[1] == ranks[0]]))
        credit = gamma * weights / (1.0 + n0)
        curves[level] = credit
        print(f"| {level:g} | {n0:.2f} | {' / '.join(f'{c:.2f}' for c in credit)} | {credit[-1] - credit[low]:+.3f} |")
    if ranks[0] != 0 or ranks[-1] != max_rank:
        raise FedsimError(f"ranks {ranks}: the curve needs rank 0 and rank {max_rank} (adapter.max_rank) among the fixed ranks")
    mapping = ", ".join(
        f"{level:g}: [" + ", ".join(f"[{rank / max_rank:g}, {c:.2f}]" for rank, c in zip(ranks, credit)) + "]" for level, credit in curves.items()
    )
    print("\npolicy.reward.objective_credit: {" + mapping + "}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="a finished sweep directory (scenarios/objective_calibration.yaml)")
    parser.add_argument("--split", default="channel.snr_db", help="the field that sets the SNR level (default channel.snr_db)")
    parser.add_argument("--levels", type=float, nargs="+", help="fit on these values of --split only (default: all)")
    parser.add_argument("--anchors", type=float, nargs="+", help="SNR anchors (dB, two or more): one curve per anchor, linear in between")
    parser.add_argument(
        "--returns",
        choices=["linear", "diminishing"],
        default="linear",
        help="linear: O = a + c(r) N (default); diminishing: O = a + γ log(1 + w(r) N), credit per level (module docstring)",
    )
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
    if args.returns == "diminishing":
        if args.anchors is not None:
            raise FedsimError("--anchors: not with --returns diminishing, whose credit is one curve per calibrated level")
        diminishing_report(points, max_rank)
        return 0
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
