"""Child commands that end with the lesion-ml process that started them.

`lesion bench scale`, `sites` and `curve` run the pipeline for tens of minutes as child commands
(`dvc repro --single-item`, `lesion server run -- dvc repro`), which start stage processes of their
own. Each such command runs in a process group of its own. When the bench is interrupted (Ctrl-C,
or a SIGTERM from a job scheduler or `kill`), the whole group is first asked to stop as Ctrl-C asks
it (SIGINT: DVC stops its stage, `lesion server run` stops its Prefect server), then terminated,
then killed, before the bench exits: no stage goes on training in the background. A SIGKILL of the
bench itself cannot be passed on.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# each signal in turn, and how long the group gets to end after it
STOP_STEPS: tuple[tuple[signal.Signals, float], ...] = (
    (signal.SIGINT, 20.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))


class Terminated(SystemExit):
    """A SIGTERM reached this process: raised where the process is, so that its cleanups run; it
    exits with status 143 (128 + 15), as a shell reports a command ended by SIGTERM."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextmanager
def own_group(cmd: list[str], **popen) -> Iterator[subprocess.Popen]:
    """`subprocess.Popen(cmd, **popen)` in a process group of its own, for the block. A SIGTERM to
    this process raises `Terminated` meanwhile (in the main thread); whatever ends the block with an
    exception (that, Ctrl-C's KeyboardInterrupt, an error) stops the command's whole group first."""
    proc = subprocess.Popen(cmd, start_new_session=True, **popen)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
    try:
        yield proc
    except BaseException:
        stop_group(proc)
        raise
    finally:
        if main:  # None: the handler was not set from Python (the default, as far as Python can restore)
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def stop_group(proc: subprocess.Popen, steps: tuple[tuple[signal.Signals, float], ...] | None = None) -> bool:
    """Send each signal of `steps` (default STOP_STEPS) to `proc`'s process group until no process
    of the group is left, waiting the step's seconds after each; whether the group ended."""
    for sig, grace in steps or STOP_STEPS:
        if not _signal_group(proc.pid, sig) or _group_ends_within(proc, grace):
            break
    proc.poll()
    return not _group_alive(proc.pid)


def _group_ends_within(proc: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        proc.poll()  # reaps the leader once it ends
        if not _group_alive(proc.pid):
            return True
        time.sleep(0.1)
    return False


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group `pgid` is still running. Zombies do not count: an orphan is
    reaped by the system's init, which in a container may never do it."""
    if not os.path.isdir("/proc/self"):
        return _signal_group(pgid, 0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rpartition(")")[2].split()[:3]
        except (OSError, ValueError):
            continue  # ended while read
        if int(group) == pgid and state != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the process group `pgid`; False when none of its processes is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True
