"""The policy comparison's table: final accuracy, bytes to 90% of the best accuracy, and energy.

Reads a finished `fedsim sweep scenarios/policy_compare.yaml` directory and prints, per SNR and
policy, means over seeds (± the spread, max - min / 2) of

- final accuracy (the last round, on the sweep's evaluation subset);
- MB uploaded until the round whose accuracy first reached 90% of the best policy's mean final
  accuracy at that SNR ("-" and a count when some seeds never reached it);
- uplink energy in joules (Σ energy_j over rounds) and mean rank;
- updates dropped.

    .venv/bin/python benchmarks/policy_table.py runs/policy_compare
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from fedsim.collect import find_finished_runs


def policy_label(config: dict) -> str:
    name = config.get("policy.name")
    return f"{name}-{config['policy.rank']}" if name == "fixed" else str(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir")
    args = parser.parse_args()
    runs = find_finished_runs(args.sweep_dir)
    groups: dict[tuple[float, str], list] = defaultdict(list)
    for run in runs:
        groups[(float(run.config["channel.snr_db"]), policy_label(run.config))].append(run)
    order = list(dict.fromkeys(policy_label(r.config) for r in runs))
    print(f"{len(runs)} finished runs in {args.sweep_dir}")
    header = f"{'SNR dB':>6}  {'policy':<15} {'seeds':>5} {'final acc':>14} {'MB to 90% best':>15} {'energy J':>10} {'mean rank':>9} {'dropped':>8}"
    for snr in sorted({k[0] for k in groups}):
        finals = {p: np.mean([r.rounds[-1]["accuracy"] for r in groups[(snr, p)]]) for p in order if (snr, p) in groups}
        target = 0.9 * max(finals.values())
        print(f"\nSNR {snr:g} dB: best mean final accuracy {max(finals.values()):.3f}, target {target:.3f}")
        print(header)
        for policy in order:
            members = groups.get((snr, policy), [])
            if not members:
                continue
            acc = np.array([r.rounds[-1]["accuracy"] for r in members])
            reached, missing = [], 0
            for r in members:
                hit = next((row["cum_bytes_up"] for row in r.rounds if row["accuracy"] >= target), None)
                if hit is None:
                    missing += 1
                else:
                    reached.append(hit / 1e6)
            to_target = f"{np.mean(reached):.2f}" if reached else "-"
            if missing:
                to_target += f" ({missing} never)"
            energy = np.array([sum(row["energy_j"] for row in r.rounds) for r in members])
            rank = np.mean([np.mean([row["mean_rank"] for row in r.rounds]) for r in members])
            dropped = sum(sum(row["clients_dropped"] for row in r.rounds) for r in members)
            selected = sum(sum(row["clients_selected"] for row in r.rounds) for r in members)
            spread = (acc.max() - acc.min()) / 2
            print(
                f"{snr:>6g}  {policy:<15} {len(members):>5} {acc.mean():>8.3f} ±{spread:.3f} {to_target:>15} "
                f"{energy.mean():>10.3f} {rank:>9.2f} {dropped:>4}/{selected:<3}"
            )


if __name__ == "__main__":
    main()
