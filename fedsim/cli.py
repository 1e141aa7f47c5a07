"""`fedsim` command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from fedsim.types import FedsimError, Terminated

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


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose 'unrecognized arguments' error says how scenario fields are set when one looks like one."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            field = next((a[2:].split("=", 1)[0] for a in message.split()[2:] if a.startswith("--")), None)
            if field and field.split(".", 1)[0] in _scenario_fields():
                message += f"; scenario fields are set with --set {field}=VALUE"
        super().error(message)


def _scenario_fields() -> set[str]:
    from fedsim.config import Scenario

    return set(Scenario.model_fields)


def build_parser() -> argparse.ArgumentParser:
    from fedsim import __version__

    parser = _Parser(prog="fedsim", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fedsim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="run one scenario and write its run directory",
        description="Run one scenario end to end and write its run directory.",
        epilog=EXAMPLES_RUN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_scenario_args(run)
    run.add_argument("--out", metavar="DIR", help="run directory (default: runs/<name>-<date>-<time>, suffixed -2, -3, ... when taken)")
    run.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files (the old directory is deleted first)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and CI)")
    run.set_defaults(handler=_cmd_run)

    validate = sub.add_parser(
        "validate",
        help="check a scenario file and print it fully resolved",
        description="Check a scenario file (and any --set overrides) and print every field with its resolved value.",
    )
    _add_scenario_args(validate)
    validate.set_defaults(handler=_cmd_validate)

    from fedsim.deploy import add_commands as add_deploy_commands
    from fedsim.rl.train import add_commands as add_policy_commands
    from fedsim.sweep_cli import add_commands

    # Each subcommand's parser carries its handler (argparse's set_defaults), so no process-wide table.
    for handlers in (add_commands(sub), add_policy_commands(sub), add_deploy_commands(sub)):
        for name, handler in handlers.items():
            sub.choices[name].set_defaults(handler=handler)
    return parser


def _cmd_run(args) -> int:
    from fedsim.config import load_scenario
    from fedsim.ledger import accuracy_line, is_finished
    from fedsim.runner import execute_run, start_run

    scenario = load_scenario(args.scenario, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    claim = start_run(scenario, out, overwrite=args.overwrite, unique=not args.out)
    out = claim.path
    interrupted = False
    try:
        summary = execute_run(scenario, claim, progress=not args.no_progress)
    except KeyboardInterrupt as exc:
        if not is_finished(out):
            print(f"fedsim run: {_stopped(exc)}; {out} is unfinished (no summary.json)", file=sys.stderr)
            return stop_after_interrupt(_exit_code(exc))
        # Ctrl-C while the engine shut down, after the run had written its summary: the run is complete.
        import json

        summary, interrupted = json.loads((out / "summary.json").read_text()), True
    print(
        f"run directory: {out}\n"
        f"{accuracy_line(summary)}\n"
        f"uploaded: {summary['total_bytes_up'] / 1e6:.2f} MB in {summary['rounds']} round{'s' if summary['rounds'] != 1 else ''}, "
        f"{summary['clients_dropped']} update{'s' if summary['clients_dropped'] != 1 else ''} dropped, wall time {summary['wall_s']:.0f} s"
    )
    if interrupted:
        stop_after_interrupt()  # the engine's leftover threads get their grace period
    return 0


def _cmd_validate(args) -> int:
    from fedsim.config import load_scenario
    from fedsim.runner import preflight

    scenario = load_scenario(args.scenario, args.overrides)
    preflight(scenario)  # what a run checks before it starts: backbone, data files, policy checkpoint
    sys.stdout.write(scenario.to_yaml())
    print(f"# {args.scenario}: valid", file=sys.stderr)
    return 0


def _on_sigterm(signum, frame):
    raise Terminated()


def _stopped(exc: BaseException) -> str:
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"


def _exit_code(exc: BaseException) -> int:
    return TERMINATED if isinstance(exc, Terminated) else INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        return args.handler(args)
    except FedsimError as exc:
        print(f"fedsim {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a command may say what it left behind
        print(f"fedsim {args.command}: {_stopped(exc)}" + (f"; {exc}" if str(exc) else ""), file=sys.stderr)
        return stop_after_interrupt(_exit_code(exc))
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


INTERRUPTED = 130
TERMINATED = 143


def stop_after_interrupt(code: int = INTERRUPTED, grace_s: float = 4.0) -> int:
    """After Ctrl-C: a second Ctrl-C ends the process at once (no traceback); threads an engine left
    running (Flower's ServerApp and worker threads) get `grace_s` to end, then the process exits anyway.

    Returns the exit code when nothing lingers (the usual case: inline engine, sweeps, tests calling `main`).
    """
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL) if in_main else None
    deadline = time.monotonic() + grace_s
    main = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # interpreter shutdown would wait for those threads forever
    if in_main:
        signal.signal(signal.SIGINT, previous)
    return code


if __name__ == "__main__":
    sys.exit(main())
