"""`fedsim sweep`, `fedsim collect` and `fedsim plot`: the subcommands, kept out of cli.py so it stays short."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES_SWEEP = """\
The sweep file names a base scenario and the fields to vary:

  base: quickstart.yaml          # relative to the sweep file
  engine: inline                 # default (same ledger as Flower, no Ray start per run)
  set: {rounds: 10}              # optional fixed overrides
  grid:                          # Cartesian product
    channel.snr_db: [-5, 5, 15]
  zip:                           # optional: fields that vary together
    data.partition.alpha: [0.1, 100]
    name: [noniid, iid]
  seeds: [0, 1]

Each grid point is one run directory <labels>-<hash10> under --out. Re-running
the same command resumes: finished runs (summary.json present) are skipped,
unfinished ones are redone from scratch, failed ones (failed.json) are retried.

examples:
  fedsim sweep scenarios/snr_sweep.yaml --workers 2
  fedsim sweep scenarios/snr_sweep.yaml --status
  fedsim sweep scenarios/snr_sweep.yaml --dry-run
  fedsim sweep scenarios/hetero_sweep.yaml --out runs/hetero --workers 2
"""

EXAMPLES_COLLECT = """\
examples:
  fedsim collect runs/snr_sweep
  python -c "import pandas as pd; print(pd.read_csv('runs/snr_sweep/results.csv').groupby('channel.snr_db').accuracy.max())"
"""

EXAMPLES_PLOT = """\
Figures (PNG and SVG) go to DIR/plots/:
  <y>_vs_<x>          seed means with 95% CI bands, one curve per --hue group, one panel per --facet value
  rank_heatmap        mean LoRA rank per layer and round, for one run (--run)
  accuracy_at_budget  accuracy reached within an upload budget (--budget-mb), per policy / group

examples:
  fedsim plot runs/snr_sweep
  fedsim plot runs/snr_sweep --x latency
  fedsim plot runs/hetero_sweep --hue data.partition.alpha --facet channel.snr_db --y loss
  fedsim plot runs/snr_sweep --budget-mb 5 --run snr_db=5_seed=0-0123456789
"""


def add_commands(sub) -> dict:
    """Add the subparsers; returns {name: handler} (fedsim.cli sets each as its parser's default)."""
    raw = argparse.RawDescriptionHelpFormatter
    sweep = sub.add_parser(
        "sweep",
        help="run a grid of scenarios (parallel, resumable)",
        description="Run every grid point of a sweep file, one run directory each; re-run to resume.",
        epilog=EXAMPLES_SWEEP,
        formatter_class=raw,
    )
    sweep.add_argument("sweep_file", metavar="SWEEP.yaml", help="sweep file (see scenarios/snr_sweep.yaml)")
    sweep.add_argument("--out", metavar="DIR", help="sweep directory (default: runs/<sweep file name>)")
    sweep.add_argument("--workers", type=int, default=1, metavar="N", help="runs in parallel, each in its own process; torch threads = cores // N (default 1)")
    sweep.add_argument("--engine", choices=["inline", "flower"], help="override the sweep file's engine (default inline)")
    sweep.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="run the runs as tasks on this Ray cluster (e.g. 10.0.0.5:6379 from `ray start --head`, or auto) instead of local "
        "processes; each asks for as many CPUs as its torch threads (cores // --workers here); the nodes must see this "
        "directory at the same path",
    )
    sweep.add_argument("--status", action="store_true", help="list done / unfinished / failed / pending runs and exit")
    sweep.add_argument("--dry-run", action="store_true", help="validate every grid point, list the run directories, run nothing")
    sweep.add_argument("--no-progress", action="store_true", help="one line per finished run instead of a progress bar")

    collect = sub.add_parser(
        "collect",
        help="gather finished runs into results.csv (one row per run per round)",
        description="Write DIR/results.csv: one row per finished run per round, every varying scenario field as a column, "
        "plus seed and run_dir (and results.parquet when pyarrow is installed).",
        epilog=EXAMPLES_COLLECT,
        formatter_class=raw,
    )
    collect.add_argument("dir", metavar="DIR", help="a sweep directory, or any directory holding run directories")

    plot = sub.add_parser(
        "plot",
        help="plot accuracy vs MB (and more) from a sweep directory",
        description="Plot the finished runs under DIR (collects results.csv first).",
        epilog=EXAMPLES_PLOT,
        formatter_class=raw,
    )
    plot.add_argument("dir", metavar="DIR", help="a sweep directory, or any directory holding run directories")
    plot.add_argument(
        "--x",
        choices=["bytes_up", "latency", "energy", "round"],
        default="bytes_up",
        help="x axis: uploaded MB, simulated time s (compute + upload), client energy J, or round (default bytes_up)",
    )
    plot.add_argument("--y", choices=["accuracy", "loss"], default="accuracy", help="y axis (default accuracy)")
    plot.add_argument("--hue", metavar="FIELD", help="one curve per value of this field (default policy.name, else the first varying field)")
    plot.add_argument("--facet", metavar="FIELD", help="one panel per value of this field (default the next varying field)")
    plot.add_argument("--run", metavar="NAME", help="run directory for the rank heatmap (default the first finished run)")
    plot.add_argument("--budget-mb", type=float, metavar="MB", help="upload budget of the bar chart (default the smallest total any run uploaded)")
    plot.add_argument("--out", metavar="DIR", help="where the figures go (default DIR/plots)")
    return {"sweep": _cmd_sweep, "collect": _cmd_collect, "plot": _cmd_plot}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _cmd_sweep(args) -> int:
    from fedsim.sweeps import check_sweep_dir, default_out_dir, load_sweep, made_by_other_code, other_code_note, preflight_points, run_sweep, status_report
    from fedsim.types import FedsimError

    if args.workers < 1:
        raise FedsimError(f"--workers {args.workers}: must be at least 1")
    sweep = load_sweep(args.sweep_file, engine=args.engine, workers=args.workers)
    out = Path(args.out) if args.out else default_out_dir(args.sweep_file)
    check_sweep_dir(out, writable=not args.status, points=[p.name for p in sweep.points])
    if args.status:
        print(status_report(sweep, out))
        return 0
    if args.dry_run:
        preflight_points(sweep)  # what each run checks first (data files, backbone, policy checkpoint), for every point
        print(f"{_count(len(sweep.points), 'run')}, all valid, into {out}:")
        for point in sweep.points:
            print(f"  {point.name}")
        return 0
    counts = run_sweep(sweep, out, workers=args.workers, progress=not args.no_progress, ray_address=args.ray_address)
    print(
        f"sweep directory: {out}\n"
        f"{counts['done']}/{counts['total']} runs done ({counts['ran']} ran now, {counts['skipped']} already done), {counts['failed']} failed"
        + (f"; see {out / 'failed.json'}; re-run the same command to retry them" if counts["failed"] else "")
        + f"\nnext: fedsim plot {out}"
    )
    note = other_code_note(made_by_other_code(sweep, out)) if counts["skipped"] else None
    if note:
        print(note)
    return 1 if counts["failed"] else 0


def _cmd_collect(args) -> int:
    from fedsim.collect import provenance_note, results_table, write_results
    from fedsim.types import FedsimError

    if not Path(args.dir).is_dir():
        raise FedsimError(f"{args.dir}: no such directory")
    table = results_table(args.dir)  # every run read and checked before anything is written
    skipped = unfinished_runs(args.dir)
    if not table[2]:
        also = f"; skipped {_skipped_text(skipped)}" if skipped else ""
        raise FedsimError(f"{args.dir}: no finished runs (no run directory with summary.json){also}")
    csv_path, parquet_path, n_runs, n_rows = write_results(args.dir, table)
    print(
        f"{csv_path}: {_count(n_rows, 'row')} from {_count(n_runs, 'run')}"
        + (f"; also {parquet_path}" if parquet_path else " (install pyarrow for results.parquet)")
    )
    note = provenance_note(table[2])
    if note:
        print(note)
    if skipped:
        print(f"skipped {_skipped_text(skipped)}")
    return 0


def unfinished_runs(root: str | Path) -> list[Path]:
    """Run directories under `root` that have started (config.yaml) but not finished (no summary.json).

    In a sweep directory only the current sweep's points count, as for collecting.
    """
    from fedsim.collect import sweep_run_names
    from fedsim.ledger import is_finished

    root = Path(root)
    members = sweep_run_names(root)
    found = []
    for config in sorted(root.rglob("config.yaml")):
        run_dir = config.parent
        if any(part.startswith(".") for part in run_dir.relative_to(root).parts):
            continue  # a directory being replaced (--overwrite) or a staging area
        if members is not None and run_dir.relative_to(root).as_posix() not in members and run_dir.name not in members:
            continue
        if not is_finished(run_dir):
            found.append(run_dir)
    return found


def _skipped_text(runs: list[Path], shown: int = 5) -> str:
    names = ", ".join(r.name for r in runs[:shown]) + (f", ... ({len(runs) - shown} more)" if len(runs) > shown else "")
    return f"{len(runs)} unfinished run{'s' if len(runs) != 1 else ''} (no summary.json): {names}"


def _cmd_plot(args) -> int:
    from fedsim.plots import make_plots

    # Everything is checked before anything is drawn; results.csv and the figures are written together, or not at all.
    paths = make_plots(args.dir, x=args.x, y=args.y, hue=args.hue, facet=args.facet, run=args.run, budget_mb=args.budget_mb, out_dir=args.out, collect=True)
    print("wrote " + ", ".join(str(p) for p in paths if p.suffix == ".png") + " (and .svg)")
    skipped = unfinished_runs(args.dir)
    if skipped:
        print(f"skipped {_skipped_text(skipped)}")
    return 0
