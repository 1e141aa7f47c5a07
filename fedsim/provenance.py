"""What produced a run: fedsim's version and commit, the libraries that set its numbers, and the CPU.

A ledger is byte for byte repeatable for one scenario and seed only with the same code, the same library
versions (`constraints.txt`) and the same model of CPU (torch's and BLAS's kernels round by the CPU they run
on: the losses then move in the 7th digit). summary.json records all three, so that a number in a paper can be
traced to what made it, and `fedsim collect` warns when a directory's runs come from several commits.
"""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

LIBRARIES = ("torch", "transformers", "peft", "flwr", "numpy", "scipy", "stable-baselines3", "diffusers")


@cache
def fedsim_commit() -> tuple[str | None, bool | None]:
    """(git commit of the fedsim source this process runs, whether tracked files have uncommitted changes); (None,
    None) outside a git checkout (an installed wheel) or without git."""
    return _git_commit(Path(__file__).resolve().parents[1])


def code_label(commit: str | None, dirty: bool | None) -> str:
    """A short name for a fedsim commit, as notes print it: 10 hex digits, '+changes' with uncommitted changes."""
    return f"{str(commit or 'unknown')[:10]}{'+changes' if dirty else ''}"


@cache
def environment() -> dict:
    """A JSON-ready record of this process's code and machine (computed once per process)."""
    commit, dirty = fedsim_commit()
    return {
        "fedsim_version": _version("fedsim"),
        "fedsim_commit": commit,  # None outside a git checkout (an installed wheel)
        "fedsim_dirty": dirty,  # uncommitted changes to tracked files: the commit alone does not say what ran
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "cpu": _cpu_model(),
        "torch_cpu_capability": _torch_cpu_capability(),
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git_commit(root: Path) -> tuple[str | None, bool | None]:
    if not (root / ".git").exists():
        return None, None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git on this machine
        return None, None
    if head.returncode != 0:
        return None, None
    return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_cpu_capability() -> str | None:
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - an old torch without the call: the CPU model still says most
        return None
