"""Figures from a sweep (or any directory of finished runs), written as PNG and SVG.

* ``<y>_vs_<x>``: one curve per hue group, one panel per facet value. A curve
  is the mean over seeds at each round; the band is the 95% confidence interval
  of that mean over seeds, ``mean ± t_{0.975, n-1} · s / sqrt(n)`` (Student t,
  n - 1 dof; fedsim.stats.mean_ci), for any n >= 2: with 2 seeds that is
  ±12.7 standard errors, which is what two seeds can tell (clipped to [0, 1]
  for accuracy); no band for one seed. x is the seed mean too (with fading,
  bytes and airtime differ per seed). The bands are per group: whether two
  groups differ is a paired question over seeds (benchmarks/policy_table.py).
  A curve ends at the last round at which every one of its seeds is finite,
  marked ✕ when a seed diverged after it; two runs of one group with one seed
  are an error, not two seeds. A last round measured on another set than the
  rounds before (the whole test set, with data.eval_full_final) is joined by a
  dotted line to a hollow marker, and a footnote gives both sets' sizes.
* ``rank_heatmap``: mean rank over the round's selected clients, layer × round,
  for one run.
* ``accuracy_at_budget``: per group, the accuracy of the last round whose
  cumulative upload is within the byte budget (seed mean, 95% t-interval as above),
  with the MB those rounds spent and the seeds they cover under each bar; a bar
  whose rounds were evaluated on another set than other bars' (the whole test set
  of a last round with data.eval_full_final, the per-round subset before it) is
  hatched, and a group none of whose runs fits has an "over budget" slot.
  The default budget is the smallest total any run uploaded: a fixed spend, not
  a target taken from the results.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fedsim.collect import FinishedRun, by_seed, evaluated_on_whole_test_set, field_value, read_manifest, results_table, run_dir_name
from fedsim.stats import mean_ci
from fedsim.types import FedsimError

X_AXES = {
    # name -> (results column, scale, axis label, title words)
    "bytes_up": ("cum_bytes_up", 1e-6, "uploaded (MB, cumulative)", "uploaded MB"),
    # rounds.csv uplink_latency_s is the round's latency: the slowest client's computation + upload.
    "latency": ("cum_uplink_latency_s", 1.0, "simulated time: compute + uplink (s, cumulative)", "simulated time"),
    "energy": ("cum_energy_j", 1.0, "client energy: transmit + compute (J, cumulative)", "client energy"),
    "round": ("round", 1.0, "round", "round"),
}
Y_AXES = {"accuracy": ("accuracy", "test accuracy"), "loss": ("loss", "test loss")}

# Okabe-Ito: distinguishable with colour-vision deficiency and in greyscale print.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _style():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 160,
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.titleweight": "bold",
            "axes.labelsize": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.color": "#dddddd",
            "grid.linewidth": 0.6,
            "axes.edgecolor": "#555555",
            "legend.frameon": False,
            "svg.fonttype": "none",
        }
    )
    return plt


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    """`stem`.png and `stem`.svg in `out_dir`, each written to a temporary name and renamed into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    for path in paths:
        tmp = out_dir / f".{path.name}.{os.getpid()}.tmp"
        try:
            fig.savefig(tmp, format=path.suffix[1:], bbox_inches="tight")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return paths


def t_ci95(values: np.ndarray) -> float:
    """Half-width of the 95% CI of the mean over seeds (Student t, n - 1 dof); 0 for fewer than two values."""
    ci = mean_ci(values)
    return float(ci.half_width) if ci.n >= 2 else 0.0


def band(values: np.ndarray) -> tuple[float, float]:
    """(low, high): the 95% Student t interval of the seed mean (fedsim.stats.mean_ci); one seed: no band."""
    ci = mean_ci(values)
    if ci.n < 2:
        return ci.mean, ci.mean
    return ci.low, ci.high


def band_name(n_seeds: int) -> str:
    if n_seeds >= 2:
        return f"mean of {n_seeds} seeds, band: 95% t-CI over seeds"
    return "single seed, no band"


def seeds_text(counts) -> str:
    """band_name for a figure whose curves or bars cover these numbers of seeds: '2-4 seeds' when they differ."""
    counts = sorted(set(counts))
    if not counts:
        return "no data"
    if len(counts) == 1:
        return band_name(counts[0])
    return f"means of {counts[0]}-{counts[-1]} seeds, band: 95% t-CI over seeds" + (", none for one seed" if counts[0] < 2 else "")


def band_label(counts) -> str:
    """What the y axis's band or error bar is, for these numbers of seeds."""
    return "seed mean ± 95% t-CI" if set(counts) - {1} else "single seed"


def _fmt_value(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _short(field: str) -> str:
    return field.rsplit(".", 1)[-1]


def _shown(fields: list[str], field: str) -> bool:
    # A whole-block policy zip's "policy" column is the policy's label, made of the policy.* fields beside it.
    return not (field == "policy" and "policy.name" in fields)


def _group_label(fields: list[str], key: tuple) -> str:
    # A zipped policy block varies fields only some policies have (a fixed policy has no margin):
    # an empty value says nothing about the group, so it stays out of the label.
    return ", ".join(f"{_short(f)}={_fmt_value(v)}" for f, v in zip(fields, key) if v not in ("", None) and _shown(fields, f)) or "all runs"


def _legend_title(fields: list[str], rows_or_keys) -> str | None:
    shown = [f for i, f in enumerate(fields) if _shown(fields, f) and any(k[i] not in ("", None) for k in rows_or_keys)]
    return ", ".join(_short(f) for f in shown) or None


def _hue_styles(rows: list[dict], hue_fields: list[str]) -> tuple[list[tuple], dict, dict]:
    """(hue keys in order, colour per key, marker per key), from every row: the curves and the budget bars of one
    sweep give each hue the same colour."""
    keys = sorted({tuple(row.get(f) for f in hue_fields) for row in rows}, key=lambda k: tuple(_sort_key(v) for v in k))
    return keys, {h: PALETTE[i % len(PALETTE)] for i, h in enumerate(keys)}, {h: MARKERS[i % len(MARKERS)] for i, h in enumerate(keys)}


def check_one_run_per_seed(root: Path, runs: list[FinishedRun], fields: list[str]) -> None:
    """Two runs of one configuration with one seed would be drawn as two seeds: a one-line FedsimError instead."""
    groups: dict = defaultdict(list)
    for run in runs:
        groups[tuple(json.dumps(field_value(run.config, f), sort_keys=True, default=str) for f in fields)].append(run)
    for members in groups.values():
        by_seed(
            members,
            str(root),
            "they differ at most in engine, threads or ray_address (a repeated run, or one scenario on two engines) and would count "
            "as two seeds; move one of them out of the directory",
        )


def _sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def metric_name(runs) -> str:
    """What the runs' `accuracy` columns hold, from summary.json's `metric` (fedsim.tasks): 'accuracy' for
    classification and for runs from before the field, 'exact match' for causal-LM, ..."""
    names = {str(r.summary.get("metric", "accuracy")) for r in runs}
    return names.pop().replace("_", " ") if len(names) == 1 else "task metric"


def _load(root: Path):
    columns, rows, runs, fields = results_table(root)
    if not runs:
        raise FedsimError(f"{root}: no finished runs (no run directory with summary.json); run `fedsim sweep` or `fedsim run` first")
    return columns, rows, runs, fields


def sweep_axes(root: Path, fields: list[str]) -> list[list[str]]:
    """The varying fields grouped into axes: a sweep's zipped fields form one axis, every other field its own."""
    groups: list[list[str]] = []
    manifest = read_manifest(root)
    if manifest is not None:
        for group in manifest.get("zip_groups", []):
            present = [f for f in group if f in fields]
            if present:
                groups.append(present)
    axes: list[list[str]] = []
    for name in fields:
        if any(name in axis for axis in axes):
            continue
        axes.append(next((g for g in groups if name in g), [name]))
    return axes


def _choose_roles(axes: list[list[str]], hue: str | None, facet: str | None) -> tuple[list[str], list[str]]:
    """(hue fields, facet fields). Every varying field lands in one of them, so nothing is averaged over silently;
    zipped fields travel together."""
    fields = [f for axis in axes for f in axis]
    for name, value in (("--hue", hue), ("--facet", facet)):
        if value is not None and value not in fields:
            allowed = ", ".join(fields) if fields else "(none: the runs differ only by seed)"
            raise FedsimError(f"{name} {value!r}: not a field that varies across these runs; allowed: {allowed}")

    def axis_of(name):
        return next(axis for axis in axes if name in axis)

    facet_axis = axis_of(facet) if facet else None
    if hue is not None:
        hue_axis = axis_of(hue)
    elif "policy.name" in fields and axis_of("policy.name") != facet_axis:
        hue_axis = axis_of("policy.name")
    else:
        hue_axis = next((axis for axis in axes if axis != facet_axis), None)
    if facet_axis is None:
        facet_axis = next((axis for axis in axes if axis != hue_axis), None)
    if facet_axis is not None and facet_axis == hue_axis:  # no varying field at all (seeds only): one curve, no facets
        raise FedsimError(f"--hue {hue!r} and --facet {facet!r} vary together (one zip axis); choose fields of different axes")
    hue_fields = list(hue_axis or []) + [f for axis in axes if axis not in (hue_axis, facet_axis) for f in axis]
    return hue_fields, list(facet_axis or [])


class Curve(NamedTuple):
    xs: np.ndarray  # seed mean of x per round
    ys: np.ndarray  # seed mean of y per round
    low: np.ndarray  # the band's edges
    high: np.ndarray
    n: int  # seeds
    diverged: bool  # a seed's x or y is not finite in the round after the last one drawn
    last_examples: tuple = ()  # (last round's, earlier rounds') eval_examples when the last round was measured on another set


def _curves(rows: list[dict], x_col: str, y_col: str, hue_fields: list[str], facet_fields: list[str]) -> dict:
    """{facet key: {hue key: Curve}} with rounds aligned across seeds. A curve stops before the first round where a
    seed's value is not finite: averaging only the seeds left would turn it into another curve without saying so."""
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))  # facet -> hue -> round -> [(x, y)]
    examples: dict = defaultdict(set)  # (facet, hue, round) -> the eval_examples its seeds were measured on
    for row in rows:
        if not isinstance(row.get(y_col), (int, float)) or not isinstance(row.get(x_col), (int, float)):
            continue
        fkey = tuple(row.get(f) for f in facet_fields)
        hkey = tuple(row.get(f) for f in hue_fields)
        table[fkey][hkey][row["round"]].append((row[x_col], row[y_col]))
        examples[(fkey, hkey, row["round"])].add(row.get("eval_examples"))
    curves: dict = {}
    for fkey, hues in table.items():
        curves[fkey] = {}
        for hkey, by_round in hues.items():
            rounds = sorted(by_round)
            finite = [bool(np.all(np.isfinite(by_round[r]))) for r in rounds]
            diverged = not all(finite)
            if diverged:
                rounds = rounds[: finite.index(False)]
            xs = np.array([np.mean([p[0] for p in by_round[r]]) for r in rounds])
            ys = np.array([np.mean([p[1] for p in by_round[r]]) for r in rounds])
            edges = np.array([band(np.array([p[1] for p in by_round[r]])) for r in rounds]).reshape(-1, 2)
            n = min((len(by_round[r]) for r in rounds), default=0)
            # With data.eval_full_final the last round is measured on the whole test set and the others on a subset.
            last, before = (examples[(fkey, hkey, r)] for r in rounds[-1:] + rounds[-2:-1]) if len(rounds) > 1 else (set(), set())
            switched = (min(last), min(before)) if last and before and last != before and len(last) == len(before) == 1 else ()
            curves[fkey][hkey] = Curve(xs, ys, edges[:, 0], edges[:, 1], n, diverged, switched)
    return curves


def plot_curves(root: Path, out_dir: Path, x: str, y: str, hue: str | None, facet: str | None, rows=None, fields=None, metric: str = "accuracy") -> list[Path]:
    plt = _style()
    if rows is None:
        _, rows, runs, fields = _load(root)
        check_one_run_per_seed(root, runs, fields)
        metric = metric_name(runs)
    x_col, scale, x_label, x_title = X_AXES[x]
    y_col, y_label = Y_AXES[y]
    y_label = f"test {metric}" if y == "accuracy" else y_label
    hue_fields, facet_fields = _choose_roles(sweep_axes(root, fields), hue, facet)
    curves = _curves(rows, x_col, y_col, hue_fields, facet_fields)
    facets = sorted(curves, key=lambda k: tuple(_sort_key(v) for v in k))
    hue_keys, colors, markers = _hue_styles(rows, hue_fields)
    drawn = [c for by_hue in curves.values() for c in by_hue.values() if len(c.xs)]
    seeds = {c.n for c in drawn}
    footnotes = []
    if any(c.diverged for c in drawn):
        footnotes.append("✕: a seed diverged after this round")
    switches = sorted({c.last_examples for c in drawn if c.last_examples}, key=str)
    if switches:
        sets = "; ".join(f"{_fmt_value(last)} test examples, the rounds before on {_fmt_value(before)}" for last, before in switches)
        footnotes.append(f"hollow marker, dotted line: the last round, measured on {sets} (data.eval_full_final)")
    unseen = [_group_label(hue_fields, h) for by_hue in curves.values() for h, c in by_hue.items() if not len(c.xs)]
    if unseen:
        footnotes.append(f"no curve (a seed is not finite in the first round): {'; '.join(unseen)}")

    ncols = min(len(facets), 3)
    nrows = int(np.ceil(len(facets) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows), sharey=True, squeeze=False)
    for ax, fkey in zip(axes.flat, facets):
        for hkey in hue_keys:
            if hkey not in curves[fkey] or not len(curves[fkey][hkey].xs):
                continue
            xs, ys, low, high, n, diverged, switched = curves[fkey][hkey]
            xs = xs * scale
            solid = len(xs) - 1 if switched else len(xs)  # the last round, on another evaluation set, is joined dotted
            ax.plot(xs[:solid], ys[:solid], color=colors[hkey], lw=1.8, marker=markers[hkey], ms=3.5, label=_group_label(hue_fields, hkey))
            if switched:
                ax.plot(xs[-2:], ys[-2:], color=colors[hkey], lw=1.4, ls=":")
                ax.plot(xs[-1:], ys[-1:], ls="none", marker=markers[hkey], ms=7, color=colors[hkey], markerfacecolor="white", markeredgewidth=1.6)
            if diverged:
                ax.plot(xs[-1:], ys[-1:], ls="none", marker="X", ms=9, color=colors[hkey], markeredgecolor="#222222", zorder=5)
            if len(seeds) > 1:  # the title gives a range then, so each curve says its own
                ax.annotate(f"n={n}", (xs[-1], ys[-1]), xytext=(7, 0), textcoords="offset points", fontsize=7, color=colors[hkey], va="center")
            if np.any(high > low):
                # A t-interval from few seeds can leave the metric's range; the metric cannot.
                if y == "accuracy":
                    low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)
                else:
                    low = np.maximum(low, 0)
                ax.fill_between(xs, low, high, color=colors[hkey], alpha=0.15, lw=0)
        if facet_fields:
            title = _group_label(facet_fields, fkey) if len(facet_fields) > 1 else f"{facet_fields[0]} = {_fmt_value(fkey[0])}"
            ax.set_title(title, fontsize=10, fontweight="normal")
        ax.set_xlabel(x_label)
        if y == "accuracy":
            from matplotlib.ticker import PercentFormatter

            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    if y == "accuracy":
        # Once, after every panel is drawn: the panels share y, and fixing the limits on the first
        # panel would freeze its top before the other panels' curves are in.
        axes.flat[0].set_ylim(bottom=0)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{y_label} ({band_label(seeds)})")
    for ax in list(axes.flat)[len(facets) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in list(axes.flat)[1 : len(facets)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.suptitle(f"{y_label.capitalize()} vs {x_title}  ·  {root.name}  ({seeds_text(seeds)})", fontweight="bold", y=1.0)
    if len(labels) > 1 or hue_fields:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), title=_legend_title(hue_fields, hue_keys))
    fig.tight_layout()
    if footnotes:
        fig.text(0.01, -0.01, "\n".join(footnotes), ha="left", va="top", fontsize=8, color="#333333")
    paths = _save(fig, out_dir, f"{y}_vs_{x}")
    plt.close(fig)
    return paths


def _layer_label(name: str) -> str:
    match = re.search(r"layer\.(\d+)\..*?(\w+)$", name)
    return f"L{match.group(1)} {match.group(2)}" if match else name.rsplit(".", 1)[-1]


def rank_matrix(run: FinishedRun) -> tuple[np.ndarray, list[int], list[str]]:
    """[layers, rounds] mean rank over the clients selected in each round, from clients.csv."""
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = defaultdict(int)
    path = run.path / "clients.csv"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FedsimError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc}); the rank heatmap needs the run's clients.csv") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if None in row or None in row.values():
                raise ValueError(f"a row with another number of fields than the header's {len(reader.fieldnames or [])}")
            ranks = np.array([float(r) for r in row["ranks"].split()])
            rnd = int(row["round"])
            if rnd in sums and len(sums[rnd]) != len(ranks):
                raise ValueError(f"{len(ranks)} ranks, the round's other clients have {len(sums[rnd])}")
            sums[rnd] = sums.get(rnd, 0) + ranks
            counts[rnd] += 1
    except (ValueError, KeyError, csv.Error) as exc:
        problem = f"no {exc} column" if isinstance(exc, KeyError) else str(exc)
        raise FedsimError(
            f"{path}, line {reader.line_num}: {problem}; the rank heatmap needs each row's round and ranks; the file is truncated or corrupt"
        ) from None
    if len({len(v) for v in sums.values()}) > 1:
        raise FedsimError(f"{path}: rounds with different numbers of layer ranks; the file is corrupt")
    rounds = sorted(sums)
    matrix = np.stack([sums[r] / counts[r] for r in rounds], axis=1) if rounds else np.zeros((0, 0))
    layers = run.summary.get("layers") or [f"layer {i}" for i in range(matrix.shape[0])]
    if rounds and len(layers) != matrix.shape[0]:
        raise FedsimError(
            f"{path}: {matrix.shape[0]} ranks per client, but {run.path / 'summary.json'} names {len(layers)} layers; one of the files is corrupt"
        )
    return matrix, rounds, [_layer_label(n) for n in layers]


def plot_rank_heatmap(run: FinishedRun, out_dir: Path, max_rank: int | None = None) -> list[Path]:
    plt = _style()
    matrix, rounds, layers = rank_matrix(run)
    if matrix.size == 0:
        return []
    vmax = max_rank or run.config.get("adapter.max_rank") or float(matrix.max())
    fig, ax = plt.subplots(figsize=(max(4.5, 0.32 * len(rounds) + 2.5), max(2.4, 0.28 * len(layers) + 1.2)))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
    ax.grid(False)
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    step = max(1, len(rounds) // 12)
    ax.set_xticks(range(0, len(rounds), step), [str(r) for r in rounds[::step]])
    ax.set_xlabel("round")
    ax.set_ylabel("adapted layer")
    ax.set_title(f"LoRA rank per layer (mean over selected clients)\n{run.name}", fontsize=10)
    bar = fig.colorbar(image, ax=ax, pad=0.02)
    bar.set_label("mean rank")
    fig.tight_layout()
    paths = _save(fig, out_dir, "rank_heatmap")
    plt.close(fig)
    return paths


def accuracy_at_budget(rows: list[dict], budget_bytes: int, group_fields: list[str]) -> dict:
    """{group key: [the last round whose cumulative upload fits the budget, per run that has one]}; every group
    that has rows is a key, one none of whose runs fits the budget with an empty list."""
    best: dict[str, dict] = {}
    keys: dict[str, tuple] = {}
    for row in rows:
        keys[row["run_dir"]] = tuple(row.get(f) for f in group_fields)
        if row["cum_bytes_up"] <= budget_bytes and (row["run_dir"] not in best or row["round"] > best[row["run_dir"]]["round"]):
            best[row["run_dir"]] = row
    groups: dict = {key: [] for key in keys.values()}
    for run_dir, row in best.items():
        groups[keys[run_dir]].append(row)
    return groups


def check_budget_mb(budget_mb) -> None:
    if budget_mb is None:
        return
    if isinstance(budget_mb, bool) or not isinstance(budget_mb, (int, float)) or not math.isfinite(budget_mb) or budget_mb <= 0:
        shown = f"{budget_mb:g}" if isinstance(budget_mb, (int, float)) else repr(budget_mb)
        raise FedsimError(f"--budget-mb {shown}: not an upload budget; allowed: a positive number of MB (default: the smallest total any run uploaded)")


@dataclass(frozen=True)
class BudgetBar:
    """One group's bar: per run of the group that fits the budget, its last round within it."""

    rows: list  # results_table rows, the chosen round of each run that fits
    runs: int  # the group's runs, fitting or not
    evaluations: frozenset  # {(whole test set?, examples)} of the chosen rounds

    @property
    def accuracies(self) -> list[float]:
        return [row["accuracy"] for row in self.rows]

    @property
    def mb(self) -> float:
        return float(np.mean([row["cum_bytes_up"] for row in self.rows])) / 1e6 if self.rows else math.nan


def budget_groups(root: Path, rows: list[dict], fields: list[str], budget_mb: float | None, runs: list[FinishedRun]) -> tuple[int, list[str], dict]:
    """(budget in bytes, group fields, {group key: BudgetBar}); a budget no run fits is a FedsimError."""
    check_budget_mb(budget_mb)
    finals: dict[str, float] = {}
    firsts: dict[str, float] = {}
    for row in rows:
        finals[row["run_dir"]] = max(finals.get(row["run_dir"], 0), row["cum_bytes_up"])
        firsts[row["run_dir"]] = min(firsts.get(row["run_dir"], math.inf), row["cum_bytes_up"])
    # Default budget: the smallest total any run uploaded, so every run's rounds reach it. Each bar is its runs'
    # last round within it, which can stand below it by up to a round's upload: the MB spent is written per bar.
    # Bytes are whole numbers, and budget_mb * 1e6 need not be (0.125014 * 1e6 = 125013.99999999999).
    budget = round(budget_mb * 1e6) if budget_mb is not None else int(min(finals.values()))
    group_fields = (["policy.name"] if "policy.name" in fields else []) + [f for f in fields if f != "policy.name"]
    chosen = accuracy_at_budget(rows, budget, group_fields)
    if not any(chosen.values()):
        raise FedsimError(f"--budget-mb {budget / 1e6:g}: no run uploads that little in its first round; allowed: at least {min(firsts.values()) / 1e6:g} MB")
    by_dir = {run_dir_name(root, run): run for run in runs}
    members: dict = defaultdict(set)
    for row in rows:
        members[tuple(row.get(f) for f in group_fields)].add(row["run_dir"])
    bars = {
        key: BudgetBar(
            picked,
            len(members[key]),
            frozenset((evaluated_on_whole_test_set(by_dir[row["run_dir"]], row), row.get("eval_examples")) for row in picked),
        )
        for key, picked in chosen.items()
    }
    return budget, group_fields, bars


HATCHES = ["", "///", "...", "\\\\\\", "++"]  # one per evaluation set; the first, a per-round subset's where there is one, plain
HATCH_NAMES = {"": "plain", "///": "hatched", "...": "dotted", "\\\\\\": "back-hatched", "++": "crossed"}
MIXED_HATCH = "xx"


def _evaluation_styles(bars: dict) -> tuple[dict, str | None]:
    """({group key: hatch}, footnote): bars evaluated on different sets (the whole test set of a last round, the
    per-round subset) would compare two measurements as one, so each set gets its hatch; no hatch when all agree."""
    sets = sorted({e for bar in bars.values() for e in bar.evaluations}, key=lambda e: (e[0], _sort_key(e[1])))
    if len(sets) <= 1:
        return {key: "" for key in bars}, None
    hatch_of = {e: HATCHES[i % len(HATCHES)] for i, e in enumerate(sets)}
    hatches = {key: (MIXED_HATCH if len(bar.evaluations) > 1 else hatch_of[next(iter(bar.evaluations))]) if bar.rows else "" for key, bar in bars.items()}
    notes = [f"{HATCH_NAMES[hatch_of[e]]}: {'whole test set' if e[0] else 'per-round subset'}, {_fmt_value(e[1])} examples" for e in sets]
    if MIXED_HATCH in hatches.values():
        notes.append("cross-hatched (mixed): the group's runs were evaluated on different sets")
    return hatches, "; ".join(notes)


def plot_budget_bars(
    root: Path,
    out_dir: Path,
    rows: list[dict],
    fields: list[str],
    budget_mb: float | None,
    metric: str = "accuracy",
    *,
    runs: list[FinishedRun],
    hue: str | None = None,
    facet: str | None = None,
) -> tuple[list[Path], int]:
    plt = _style()
    budget, group_fields, bars = budget_groups(root, rows, fields, budget_mb, runs)
    keys = sorted(bars, key=lambda k: tuple(_sort_key(v) for v in k))
    drawn = [k for k in keys if bars[k].rows]
    means = {k: float(np.mean(bars[k].accuracies)) for k in drawn}
    edges = {k: np.clip(band(np.array(bars[k].accuracies)), 0, 1) for k in drawn}
    hue_fields, _ = _choose_roles(sweep_axes(root, fields), hue, facet)
    _, hue_colors, _ = _hue_styles(rows, hue_fields)
    hatches, hatch_note = _evaluation_styles(bars)

    def seeds_line(bar: BudgetBar) -> str:
        n = f"n={len(bar.rows)}" + (f" of {bar.runs}" if len(bar.rows) < bar.runs else "")
        return f"{n}, {bar.mb:.3g} MB" if bar.rows else n

    tick_labels = [_group_label(group_fields, k).replace(", ", "\n") + "\n" + seeds_line(bars[k]) for k in keys]
    longest = max(len(line) for label in tick_labels for line in label.splitlines())
    fig, ax = plt.subplots(figsize=(max(4.0, max(0.55, 0.07 * longest) * len(keys) + 2.0), 3.6))  # upright labels must not collide
    top = max([max(means[k], edges[k][1]) for k in drawn])
    for pos, key in enumerate(keys):
        if key not in means:
            ax.text(pos, 0.02 * top, "over budget", ha="center", va="bottom", rotation=90, fontsize=8, color="#666666")
            continue
        mean, (low, high) = means[key], edges[key]
        color = hue_colors[tuple(dict(zip(group_fields, key))[f] for f in hue_fields)]
        error = np.clip([[mean - low], [high - mean]], 0, None)
        ax.bar(pos, mean, yerr=error, color=color, hatch=hatches[key], capsize=3, edgecolor="white", error_kw={"ecolor": "#333333", "lw": 1})
        label = f"{mean:.1%}" + (" (mixed)" if hatches[key] == MIXED_HATCH else "")
        ax.text(pos, max(mean, high) + 0.005, label, ha="center", va="bottom", fontsize=8, color="#333333")  # above the error bar, never crossed by it
    upright = len(keys) <= 6
    positions = np.arange(len(keys))
    ax.set_xticks(positions, tick_labels, fontsize=8, rotation=0 if upright else 45, ha="center" if upright else "right")
    ax.set_xlim(-0.6, len(keys) - 0.4)  # an over-budget slot at either end keeps its place
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    counts = [len(bars[k].rows) for k in drawn]
    ax.set_ylabel(f"test {metric} ({band_label(counts)})")
    ax.set_ylim(0, top * 1.15 or 1)  # room for the labels above the bars
    ax.grid(axis="x", visible=False)
    ax.set_title(f"{metric.capitalize()} within an upload budget of {budget / 1e6:.3g} MB\n{root.name} ({seeds_text(counts)})", fontsize=10)
    fig.tight_layout()
    notes = ["under each bar: its seeds (n) and the mean MB their last round within the budget had uploaded"]
    if hatch_note:
        notes.append(hatch_note)
    fig.text(0.01, -0.01, "\n".join(notes), ha="left", va="top", fontsize=7, color="#333333")
    paths = _save(fig, out_dir, "accuracy_at_budget")
    plt.close(fig)
    return paths, budget


def make_plots(
    root: str | Path,
    x: str = "bytes_up",
    y: str = "accuracy",
    hue: str | None = None,
    facet: str | None = None,
    run: str | None = None,
    budget_mb: float | None = None,
    out_dir: str | Path | None = None,
    table: tuple | None = None,
    collect: bool = False,
) -> list[Path]:
    """Every figure for the finished runs under `root`; returns the files written.

    `table`: results_table(root), when the caller has it already; `collect`: write root/results.csv (and .parquet)
    as well, as `fedsim plot` does. Every argument and input file is checked before anything is drawn, and the
    figures are drawn into a staging directory and renamed into `out_dir` only once all of them (and results.csv)
    are written: an error is a one-line FedsimError that leaves `out_dir` (and results.csv) as they were.
    """
    root = Path(root)
    if not root.is_dir():
        raise FedsimError(f"{root}: no such directory")
    if x not in X_AXES:
        raise FedsimError(f"--x {x!r}: not an x axis; allowed: {', '.join(X_AXES)}")
    if y not in Y_AXES:
        raise FedsimError(f"--y {y!r}: not a y axis; allowed: {', '.join(Y_AXES)}")
    check_budget_mb(budget_mb)
    out_dir = Path(out_dir) if out_dir else root / "plots"
    _check_out_dir(out_dir)
    columns, rows, runs, fields = table if table is not None else results_table(root)
    if not runs:
        raise FedsimError(f"{root}: no finished runs (no run directory with summary.json); run `fedsim sweep` or `fedsim run` first")
    for finished in runs:
        missing = [c for c in ("round", "accuracy", "cum_bytes_up") if c not in finished.rounds[0]]
        if missing:
            raise FedsimError(f"{finished.path / 'rounds.csv'}: no {missing[0]!r} column; the plots need round, accuracy and cum_bytes_up")
    metric = metric_name(runs)
    _choose_roles(sweep_axes(root, fields), hue, facet)
    if run is not None:
        chosen = [r for r in runs if r.name == run or str(r.path) == run]
        if not chosen:
            raise FedsimError(f"--run {run!r}: no finished run of that name under {root}; allowed: a run directory's name, e.g. {runs[0].name}")
    else:
        chosen = runs
    rank_matrix(chosen[0])  # its clients.csv, read and checked
    check_one_run_per_seed(root, runs, fields)
    budget_groups(root, rows, fields, budget_mb, runs)

    def draw(staging: Path) -> list[Path]:
        paths = plot_curves(root, staging, x, y, hue, facet, rows=rows, fields=fields, metric=metric)
        paths += plot_rank_heatmap(chosen[0], staging)
        paths += plot_budget_bars(root, staging, rows, fields, budget_mb, metric, runs=runs, hue=hue, facet=facet)[0]
        if collect:
            from fedsim.collect import write_results

            write_results(root, (columns, rows, runs, fields))
        return paths

    return _publish(out_dir, draw)


def _check_out_dir(out_dir: Path) -> None:
    anchor = out_dir
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if anchor.exists() and not anchor.is_dir():
        blocker = "is a file" if anchor == out_dir else f"is inside {anchor}, a file"
        raise FedsimError(f"--out {out_dir}: {blocker}, not a directory; allowed: a directory (made when missing)")
    if anchor.exists() and not os.access(anchor, os.W_OK | os.X_OK):
        raise FedsimError(f"--out {out_dir}: {anchor} is not writable")


def _publish(out_dir: Path, draw) -> list[Path]:
    """Run `draw(staging)` (which saves figures into `staging` and returns their paths), then move the figures
    into `out_dir`. On an error nothing reaches `out_dir`, and directories made for it are removed again."""
    made = []
    anchor = out_dir
    while not anchor.exists() and anchor != anchor.parent:
        made.append(anchor)
        anchor = anchor.parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".plots."))
    except OSError as exc:
        _remove_dirs(made)
        raise FedsimError(f"--out {out_dir}: cannot create it ({exc.strerror or exc})") from None
    try:
        staged = draw(staging)
        final = []
        for path in staged:
            os.replace(path, out_dir / path.name)
            final.append(out_dir / path.name)
        return final
    except OSError as exc:  # a full disk, a directory made read-only meanwhile
        shutil.rmtree(staging, ignore_errors=True)
        _remove_dirs(made)
        raise FedsimError(f"--out {out_dir}: cannot write the figures there ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_dirs(made)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_dirs(made: list[Path]) -> None:
    for directory in made:  # deepest first; only those still empty
        try:
            directory.rmdir()
        except OSError:
            break
