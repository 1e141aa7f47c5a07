"""Statistics for comparing runs over seeds: paired t-intervals and bytes-to-target.

Conventions (used by ``benchmarks/policy_table.py``, ``benchmarks/snr_table.py`` and the plots):

* **Seeds are the unit of replication.** Runs with the same seed share the data partition, the
  client sampling and the channel's random draws (common random numbers), so two configurations
  are compared **paired over seeds**: d_s = a_s - b_s for every seed s both have, and the interval
  is the Student t interval of the mean difference with n - 1 degrees of freedom,

      mean(d) ± t_{(1+c)/2, n-1} · sd(d) / sqrt(n),      sd with ddof = 1,

  at confidence c (0.95 unless told). The verdict is "significant" iff that interval excludes 0
  (equivalently a two-sided paired t-test at level 1 - c). Pairing removes the seed-to-seed
  variation both configurations share, which an unpaired (Welch) comparison counts as noise.
* **One configuration's spread** (error bars, bands): the same Student t interval of the mean over
  seeds, ``mean_ci``; with one seed there is no interval (NaN).
* **Bytes to a target**: the cumulative upload at the first round whose accuracy reaches a
  *fixed* target, chosen per study before looking at the results (a target taken from the best
  policy's mean is a winner's-curse target: it flatters the policy that defined it). A seed that
  never reaches it counts as +inf, a failure, not as a missing value; it is summarised by the
  median over seeds (``np.median`` with the infinities in: +inf as soon as at least half the
  seeds never reach it) and the fraction of seeds that reached it. Paired differences use only the
  seeds on which both reached the target, and say how many that is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

NEVER = math.inf


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy.stats import t

    if not 0 < confidence < 1:  # t.ppf gives NaN, and a NaN interval reads "not significant" everywhere
        raise ValueError(f"confidence={confidence}: a confidence level is a fraction strictly between 0 and 1, e.g. 0.95")
    return float(t.ppf(0.5 + confidence / 2, dof))


def confidence_level(text: str) -> float:
    """argparse type of a --confidence option: a fraction strictly between 0 and 1."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text}: a confidence level is a fraction strictly between 0 and 1, e.g. 0.95 (not 95)")
    return value


def format_confidence(confidence: float) -> str:
    """'95%', '97.5%' (a percentage to as many digits as it has)."""
    return f"{confidence * 100:.10g}%"


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its Student t interval (low/high NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Mean of `values` (one per seed) and its Student t interval, t_{(1+c)/2, n-1} · s / sqrt(n).

    Non-finite values are an error: averaging an infinity (a target never reached) is meaningless,
    and dropping it silently would hide a failure.
    """
    x = np.asarray(list(values), dtype=float)
    if not np.all(np.isfinite(x)):
        raise ValueError("mean_ci: non-finite values; summarise never-reached targets with target_summary")
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = _t_quantile(confidence, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class PairedDifference:
    """mean over shared seeds of (a_s - b_s), its paired Student t interval (n - 1 dof) and a verdict."""

    mean: float
    low: float
    high: float
    n: int
    verdict: str  # "significant", "not significant", "n/a (1 seed)" or "n/a (no shared seeds)"
    seeds: tuple = ()

    @property
    def significant(self) -> bool:
        return self.verdict == "significant"


def _paired_values(a, b) -> tuple[tuple, np.ndarray, np.ndarray]:
    """(seeds, a values, b values) on the seeds both have; sequences are taken as aligned by position."""
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise TypeError("paired_difference: pass two {seed: value} mappings or two aligned sequences")
    if isinstance(a, Mapping):
        seeds = tuple(sorted(set(a) & set(b), key=lambda s: (str(type(s)), s)))
        return seeds, np.array([a[s] for s in seeds], dtype=float), np.array([b[s] for s in seeds], dtype=float)
    if len(a) != len(b):
        raise ValueError(f"paired_difference: sequences of different lengths ({len(a)} and {len(b)}); pass {{seed: value}} mappings")
    return tuple(range(len(a))), np.asarray(a, dtype=float), np.asarray(b, dtype=float)


def paired_difference(a: Mapping | Sequence[float], b: Mapping | Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """Paired comparison of a against b over seeds: mean of d_s = a_s - b_s and its Student t interval.

    `a` and `b` are {seed: value} mappings (only the seeds both have are used) or two sequences
    aligned by seed. The interval is mean(d) ± t_{(1+c)/2, n-1} · sd(d, ddof=1) / sqrt(n): a paired
    t-interval over seeds, valid because runs with the same seed share partitions and channel
    draws. Verdict "significant" iff the interval excludes 0 (differences equal on every seed, such as deterministic
    byte counts, give a zero-width interval: significant unless they are 0, where a t-test has no p-value). With one shared seed the mean is
    returned with a NaN interval and verdict "n/a (1 seed)".
    """
    seeds, x, y = _paired_values(a, b)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("paired_difference: non-finite values; compare bytes-to-target with paired_to_target")
    n = len(seeds)
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0, "n/a (no shared seeds)", seeds)
    d = x - y
    mean = float(d.mean())
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, 1, "n/a (1 seed)", seeds)
    half = _t_quantile(confidence, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = "significant" if low > 0 or high < 0 else "not significant"
    return PairedDifference(mean, low, high, n, verdict, seeds)


# --- bytes (or time, energy) to a fixed target ----------------------------------------------------


def to_target(rounds: Sequence[Mapping], target: float, cost: str = "cum_bytes_up", metric: str = "accuracy") -> float:
    """`cost` (a cumulative column) at the first round whose `metric` is >= `target`; +inf if none does.

    `target` must be fixed before looking at the results (see the module docstring).
    """
    for row in rounds:
        value = row.get(metric)
        if isinstance(value, (int, float)) and value >= target:
            return float(row[cost])
    return NEVER


@dataclass(frozen=True)
class TargetSummary:
    """Cost to reach a target over seeds: the median with never = +inf, and how many seeds reached it."""

    median: float  # +inf when at least half the seeds never reached the target
    reached: int
    n: int

    @property
    def never(self) -> int:
        return self.n - self.reached

    @property
    def fraction(self) -> float:
        return self.reached / self.n if self.n else math.nan


def target_summary(costs: Iterable[float]) -> TargetSummary:
    """Median over seeds of the cost to target, counting never (+inf) as a failure, not a gap.

    The median is np.median over every seed with the infinities included, so it is +inf when more
    than half (for an even count: half or more) of the seeds never reached the target; averaging
    only the seeds that reached it would reward a configuration for its failures.
    """
    x = np.asarray(list(costs), dtype=float)
    if np.any(np.isnan(x)):
        raise ValueError("target_summary: NaN cost; use +inf (fedsim.stats.NEVER) for a target never reached")
    n = len(x)
    if n == 0:
        return TargetSummary(math.nan, 0, 0)
    return TargetSummary(float(np.median(x)), int(np.isfinite(x).sum()), n)


@dataclass(frozen=True)
class PairedToTarget:
    """Paired difference of costs to target on the seeds where both reached it, and what was left out."""

    difference: PairedDifference  # over the seeds where both reached the target
    only_a: int  # seeds (shared) where only a reached the target
    only_b: int
    neither: int


def paired_to_target(a: Mapping, b: Mapping, confidence: float = 0.95) -> PairedToTarget:
    """Paired t-interval of cost_a - cost_b over the shared seeds on which both reached the target.

    Seeds where one or both never reached it have no finite difference; they are counted
    (`only_a`, `only_b`, `neither`) rather than dropped silently, and the reached fractions of
    `target_summary` carry that part of the comparison. With no seed reached by both the
    verdict is "n/a (no seed reached by both)".
    """
    shared = set(a) & set(b)
    both = {s for s in shared if math.isfinite(a[s]) and math.isfinite(b[s])}
    only_a = sum(1 for s in shared if math.isfinite(a[s]) and not math.isfinite(b[s]))
    only_b = sum(1 for s in shared if math.isfinite(b[s]) and not math.isfinite(a[s]))
    neither = len(shared) - len(both) - only_a - only_b
    if not both:
        diff = PairedDifference(math.nan, math.nan, math.nan, 0, "n/a (no seed reached by both)")
    else:
        diff = paired_difference({s: a[s] for s in both}, {s: b[s] for s in both}, confidence)
    return PairedToTarget(diff, only_a, only_b, neither)


# --- formatting -------------------------------------------------------------------------------------


def format_interval(low: float, high: float, digits: int = 3, signed: bool = False) -> str:
    """'[low, high]' or '-' when there is no interval (one seed)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "-"
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"[{fmt.format(low)}, {fmt.format(high)}]"
