"""Summarise where a finished sweep's time went: per-run wall time, seconds per round, drops.

    /usr/bin/time -v fedsim sweep scenarios/snr_sweep.yaml --workers 2 --out /tmp/snr_sweep
    .venv/bin/python benchmarks/sweep_runtime.py /tmp/snr_sweep

The sweep's own wall time comes from `time`; this prints the per-run figures recorded in each
run's summary.json and timings.csv (wall clock, so they include any load from other processes).
Runs not finished yet (no summary.json) are listed as such; a sweep still running can be summarised.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from fedsim.types import FedsimError, run_script


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FedsimError(f"{path}: missing; {what}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FedsimError(f"{path}: unreadable ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]}); {what}") from None
    if not isinstance(data, dict):
        raise FedsimError(f"{path}: expected a JSON object, found a {type(data).__name__}; {what}")
    return data


def round_walls(path: Path) -> list[float]:
    try:
        with path.open(newline="") as fh:
            return [float(r["wall_s"]) for r in csv.DictReader(fh)]
    except FileNotFoundError:
        return []
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise FedsimError(f"{path}: unreadable ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}); expected a wall_s column") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", help="the --out directory of `fedsim sweep` (it holds sweep.json)")
    args = parser.parse_args(argv)
    root = Path(args.sweep_dir)
    if not root.is_dir():
        raise FedsimError(f"{root}: not a directory; expected the --out directory of `fedsim sweep`")
    expected = "expected the --out directory of `fedsim sweep` (it writes sweep.json first)"
    manifest = read_json(root / "sweep.json", expected)
    points = manifest.get("points")
    if not isinstance(points, list) or not all(isinstance(p, dict) and isinstance(p.get("dir"), str) for p in points):
        raise FedsimError(f"{root / 'sweep.json'}: no 'points' list of {{dir: ...}}; {expected}")
    walls, all_rounds, rows = [], [], []
    for point in points:
        run = root / point["dir"]
        if not (run / "summary.json").is_file():
            rows.append(f"  {point['dir']:<60} not finished")
            continue
        summary = read_json(run / "summary.json", "expected a finished run's summary")
        per_round = round_walls(run / "timings.csv")
        try:
            per_round_text = f"{sum(per_round) / len(per_round):5.1f} s/round" if per_round else "  no timings.csv"
            rows.append(
                f"  {point['dir']:<60} {summary['wall_s']:7.0f} s  {per_round_text}  "
                f"acc {summary['final_accuracy']:.3f}  {summary['total_bytes_up'] / 1e6:6.1f} MB up  {summary['clients_dropped']:3d} dropped"
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FedsimError(f"{run / 'summary.json'}: lacks or garbles {exc}; expected wall_s, final_accuracy, total_bytes_up, clients_dropped") from None
        walls.append(summary["wall_s"])
        all_rounds.extend(per_round)
    print(f"{root}: {len(walls)}/{len(points)} runs finished, engine {manifest.get('engine', '?')}")
    print("\n".join(rows))
    if walls:
        per_round = f"round: mean {sum(all_rounds) / len(all_rounds):.1f} s over {len(all_rounds)} rounds" if all_rounds else "no round timings"
        print(f"run wall time: sum {sum(walls):.0f} s, mean {sum(walls) / len(walls):.0f} s; {per_round}")
    return 0


if __name__ == "__main__":
    run_script(main, "sweep_runtime")
