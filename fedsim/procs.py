"""Child processes die with their parent: Linux's parent-death signal, set from inside the child.

`die_with_parent(parent_pid)` is the initializer of sweep worker processes: if the sweep's
main process dies (even by SIGKILL), the kernel sends each worker SIGKILL, so no worker
(~600 MB each) goes on finishing queued runs with parent 1.

Ray (`engine: flower`) sets the same signal on the processes it starts itself (GCS, raylet:
its "kernel fate sharing"), but not on the agents the raylet starts: after a SIGKILLed run the
dashboard and runtime-env agents notice the raylet is gone, then hang for minutes trying to
report it to the dead GCS. `start_reaper()` covers them: a small watchdog child that keeps
track of this process's descendants and kills those still alive once this process is gone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int) -> None:
    """Process-pool initializer: die with `parent_pid`; leave Ctrl-C to the parent, which stops the workers itself."""
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    # The terminal sends Ctrl-C to the whole process group; a worker that took it would print a
    # KeyboardInterrupt traceback. The sweep's main process terminates its workers instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


_REAPER: subprocess.Popen | None = None
REAPER_POLL_S = 0.25


def start_reaper() -> None:
    """Start (once per process) the watchdog that kills this process's descendants when it dies, however it dies.
    Returns once it watches: a parent killed while the watchdog was still starting would leave its children."""
    global _REAPER
    if _REAPER is not None and _REAPER.poll() is None:
        return
    try:
        import psutil  # noqa: F401 - Ray's dependency; without it there is no reaper
    except ImportError:
        return
    _REAPER = subprocess.Popen(
        [sys.executable, "-m", "fedsim.procs", str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True,
    )  # fmt: skip
    assert _REAPER.stdout is not None
    _REAPER.stdout.readline()  # "watching" (or nothing, if it could not start)
    _REAPER.stdout.close()


def reap_descendants_after(parent_pid: int) -> None:
    """The watchdog's loop: note `parent_pid`'s descendants every REAPER_POLL_S; when it is gone, kill them."""
    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the whole group; the watchdog outlives it
    me = os.getpid()
    seen: dict[int, float] = {}  # pid -> start time (a reused pid is not the same process)
    try:
        parent = psutil.Process(parent_pid)
    except psutil.NoSuchProcess:
        return
    announced = False
    while os.getppid() == parent_pid:
        try:
            current = {p.pid: p.create_time() for p in parent.children(recursive=True) if p.pid != me}
        except psutil.NoSuchProcess:
            break
        except psutil.Error:
            current = {}
        # Keep what we saw earlier while it lives: agents orphaned by a dead raylet are no longer descendants.
        seen = {**{pid: t for pid, t in seen.items() if _alive_as(pid, t)}, **current}
        if not announced:  # start_reaper waits for this line
            announced = True
            try:
                print("watching", flush=True)
                sys.stdout.close()
            except OSError:
                pass
        time.sleep(REAPER_POLL_S)
    victims = []
    for pid, started in seen.items():
        if _alive_as(pid, started):
            try:
                process = psutil.Process(pid)
                victims.append(process)
                victims.extend(process.children(recursive=True))
            except psutil.Error:
                pass
    for process in victims:
        try:
            process.kill()
        except psutil.Error:
            pass


def _alive_as(pid: int, started: float) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        return process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


if __name__ == "__main__":  # `python -m fedsim.procs PID`: the watchdog
    reap_descendants_after(int(sys.argv[1]))


def check_ray_address(address: str, field: str) -> None:
    """A Ray cluster address (host:port) nobody listens on is one line at once, naming `field`; ray.init would
    retry for minutes. Forms Ray resolves itself ("auto") pass through."""
    import socket

    from fedsim.types import FedsimError

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise FedsimError(f"{field} {address}: no Ray cluster there ({exc.strerror or exc}); start one with `ray start --head`") from None
