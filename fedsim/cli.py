"""`fedsim` command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fedsim.types import FedsimError

DESCRIPTION = """\
fedsim: simulate federated fine-tuning of a language model over a wireless uplink.

Each round a server (a Flower ServerApp) samples clients, a rank policy picks a
LoRA rank per layer for each of them, clients train on their own data, and every
upload is metered through a channel model (bits, seconds, joules, drops).
Results land in a run directory: config.yaml, rounds.csv, clients.csv,
summary.json and the final adapter (PEFT format).

Start with:  fedsim run scenarios/quickstart.yaml
"""

EXAMPLES_RUN = """\
examples:
  fedsim run scenarios/quickstart.yaml
  fedsim run scenarios/quickstart.yaml --set rounds=5 --set channel.snr_db=0
  fedsim run scenarios/quickstart.yaml --set model.backbone=tiny-random --out runs/try1
"""


def _add_scenario_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", help="scenario YAML file (copy one from scenarios/ and edit it)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one scenario field, e.g. --set adapter.max_rank=4 (repeatable; VALUE is YAML)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsim", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run one scenario and write its run directory",
        description="Run one scenario end to end and write its run directory.",
        epilog=EXAMPLES_RUN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_scenario_args(run)
    run.add_argument("--out", metavar="DIR", help="run directory (default: runs/<name>-<date>-<time>)")
    run.add_argument("--overwrite", action="store_true", help="reuse --out even if it already holds files")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and CI)")

    validate = sub.add_parser(
        "validate",
        help="check a scenario file and print it fully resolved",
        description="Check a scenario file (and any --set overrides) and print every field with its resolved value.",
    )
    _add_scenario_args(validate)

    from fedsim.sweep_cli import add_commands

    COMMANDS.update(add_commands(sub))
    from policies.train import add_commands as add_policy_commands

    COMMANDS.update(add_policy_commands(sub))
    from fedsim.deploy import add_commands as add_deploy_commands

    COMMANDS.update(add_deploy_commands(sub))
    return parser


def _cmd_run(args) -> int:
    from fedsim.config import load_scenario
    from fedsim.run import run_scenario

    scenario = load_scenario(args.scenario, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = run_scenario(scenario, out, progress=not args.no_progress, overwrite=args.overwrite)
    print(
        f"run directory: {out}\n"
        f"final accuracy: {summary['final_accuracy']:.4f} (round 1: {summary['first_round_accuracy']:.4f})\n"
        f"uploaded: {summary['total_bytes_up'] / 1e6:.2f} MB in {summary['rounds']} rounds, "
        f"{summary['clients_dropped']} updates dropped, wall time {summary['wall_s']:.0f} s"
    )
    return 0


def _cmd_validate(args) -> int:
    from fedsim.config import load_scenario
    from fedsim.model import validate_backbone

    scenario = load_scenario(args.scenario, args.overrides)
    validate_backbone(scenario.model.backbone)
    sys.stdout.write(scenario.to_yaml())
    print(f"# {args.scenario}: valid", file=sys.stderr)
    return 0


COMMANDS = {"run": _cmd_run, "validate": _cmd_validate}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except FedsimError as exc:
        print(f"fedsim {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedsim {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
