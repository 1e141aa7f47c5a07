"""Summarise where a finished sweep's time went: per-run wall time, seconds per round, drops.

    /usr/bin/time -v fedsim sweep scenarios/snr_sweep.yaml --workers 2 --out /tmp/snr_sweep
    python benchmarks/sweep_runtime.py /tmp/snr_sweep

The sweep's own wall time comes from `time`; this prints the per-run figures recorded in each
run's summary.json and timings.csv (wall clock, so they include any load from other processes).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def main(sweep_dir: str) -> None:
    root = Path(sweep_dir)
    manifest = json.loads((root / "sweep.json").read_text())
    walls, round_walls, rows = [], [], []
    for point in manifest["points"]:
        run = root / point["dir"]
        if not (run / "summary.json").is_file():
            rows.append(f"  {point['dir']:<60} not finished")
            continue
        summary = json.loads((run / "summary.json").read_text())
        with open(run / "timings.csv", newline="") as fh:
            per_round = [float(r["wall_s"]) for r in csv.DictReader(fh)]
        walls.append(summary["wall_s"])
        round_walls.extend(per_round)
        rows.append(
            f"  {point['dir']:<60} {summary['wall_s']:7.0f} s  {sum(per_round) / len(per_round):5.1f} s/round  "
            f"acc {summary['final_accuracy']:.3f}  {summary['total_bytes_up'] / 1e6:6.1f} MB up  {summary['clients_dropped']:3d} dropped"
        )
    print(f"{root}: {len(walls)}/{len(manifest['points'])} runs finished, engine {manifest['engine']}")
    print("\n".join(rows))
    if walls:
        print(
            f"run wall time: sum {sum(walls):.0f} s, mean {sum(walls) / len(walls):.0f} s; "
            f"round: mean {sum(round_walls) / len(round_walls):.1f} s over {len(round_walls)} rounds"
        )


if __name__ == "__main__":
    main(sys.argv[1])
