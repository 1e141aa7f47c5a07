"""The SNR sweep's table (or any sweep grouped by one grid field), paired over seeds.

The same report as ``benchmarks/policy_table.py`` (fedsim.stats: paired Student t intervals over
seeds, n - 1 dof; MB to a fixed accuracy target with never = +inf), with the rows grouped by a grid
field (``--by``, default ``channel.snr_db``) instead of the policy, and one table per value of every
other varying field (the policy, when it varies). The reference row (``--reference``) defaults to
the largest value of the field, i.e. the best channel for an SNR sweep: every other SNR's Δ is then
"what the worse channel costs", paired over seeds. Pairing across SNRs is valid because a seed fixes
the partition, the client sampling and the fading draws, which the SNR only rescales.

    .venv/bin/python benchmarks/snr_table.py runs/snr_sweep --target 0.4
    .venv/bin/python benchmarks/snr_table.py runs/hetero_sweep --by data.partition.alpha --reference 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from policy_table import DEFAULT_TARGET, report  # noqa: E402

from fedsim.stats import confidence_level  # noqa: E402
from fedsim.types import FedsimError  # noqa: E402


def largest_value(labels: list[str]) -> str:
    numeric = []
    for label in labels:
        try:
            numeric.append((float(label), label))
        except ValueError:
            raise FedsimError(f"the values {', '.join(labels)} are not all numbers; pass --reference") from None
    return max(numeric)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir")
    parser.add_argument("--by", default="channel.snr_db", help="grid field whose values are the rows (default channel.snr_db)")
    parser.add_argument("--reference", help="value of --by the others are compared with, paired over seeds (default: the largest)")
    parser.add_argument(
        "--target",
        type=float,
        default=DEFAULT_TARGET,
        help=f"fixed accuracy target for 'MB to target' (default {DEFAULT_TARGET}); choose it per study, not from the results",
    )
    parser.add_argument("--confidence", type=confidence_level, default=0.95, help="confidence level of the intervals (default 0.95)")
    args = parser.parse_args(argv)
    try:
        print(report(args.sweep_dir, args.by, None, args.reference, args.target, args.confidence, largest_value))
    except FedsimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
