"""Processes the driver starts die with it, even when it is killed with SIGKILL.

``ray.init()`` on a single machine starts gcs_server, raylet, the dashboard, monitors, and under
the raylet ``DashboardAgent`` and ``RuntimeEnvAgent``. Ray ties the first ones to the driver
(they die with it), but the two agents outlive a ``kill -9`` of the driver, re-parented to
init, ~200 MB until something stops them. No signal reaches a process whose parent dies twice
removed, and Ray starts the agents itself, so the driver cannot set ``PR_SET_PDEATHSIG`` on them.

:func:`start_reaper` starts a small watchdog (plain Python, no imports beyond the standard
library) that every second notes the driver's new descendants that are Ray processes (a
``ray::`` title or a path in the ray package) and their start times, and holds the
read end of a pipe whose write end only the driver has. When the pipe closes, because the driver
exited or was killed, the watchdog stops every noted process still alive (the same start time:
never a reused PID) with SIGTERM, then SIGKILL after a grace period, and exits. The watchdog
ignores SIGINT, SIGTERM and SIGHUP, so a Ctrl-C or a closed terminal that kills the driver does
not stop the clean-up. POSIX with /proc only; elsewhere it is not started.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["Reaper", "start_reaper"]

_WATCHDOG = r"""
import os, select, signal, sys, time

for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
driver, me, grace = int(sys.argv[1]), os.getpid(), float(sys.argv[2])


def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), fields[19]   # state, ppid, start time


def alive(pid, start):
    s = stat(pid)
    return s is not None and s[0] not in ("Z", "X") and s[2] == start


def is_ray(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return cmdline.startswith(b"ray::") or b"/ray/" in cmdline


def descendants():
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = stat(int(name))
            if s is not None:
                children.setdefault(s[1], []).append((int(name), s[2]))
    found, todo = {}, [driver]
    while todo:
        for pid, start in children.get(todo.pop(), ()):
            if pid != me and pid not in found:
                found[pid] = start
                todo.append(pid)
    return found


before = descendants()   # the driver's processes from before: never ours to stop
tracked = {}
clean = False            # the driver said it closed what it opened before closing the pipe
while True:
    ready, _, _ = select.select([0], [], [], 1.0)
    if ready:
        data = os.read(0, 4096)
        if not data:
            break  # the driver is gone (or closed the pipe): clean up
        clean = clean or b"clean" in data
    for pid, start in descendants().items():
        if pid not in tracked and before.get(pid) != start and is_ray(pid):
            tracked[pid] = start
left = [p for p, s in tracked.items() if alive(p, s)]
for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
    for pid in left:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    deadline = time.monotonic() + wait
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p, tracked[p])]
    if not left:
        break
if not clean and len(sys.argv) > 3:  # died without closing: its on-death command
    import subprocess
    try:
        subprocess.Popen(sys.argv[3:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError:
        pass
"""


class Reaper:
    """The watchdog of one driver; :meth:`close` when the driver's processes are stopped."""

    def __init__(self, proc: subprocess.Popen[bytes], write_fd: int) -> None:
        self.proc, self._fd = proc, write_fd

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self, timeout: float = 10.0) -> None:
        """Close the pipe: the watchdog stops what is left of the noted processes and exits
        (without running the on-death command: the driver closed what it opened)."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._fd, b"clean")
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_reaper(grace_s: float = 3.0, on_death: list[str] | None = None) -> Reaper | None:
    """Start the watchdog of this process's descendants (None where there is no /proc).
    ``on_death``: a command it runs (in a session of its own) after the clean-up when this
    process dies without :meth:`Reaper.close` (``kill -9``)."""
    if not Path("/proc/self/stat").exists() or os.name != "posix":
        return None
    read_fd, write_fd = os.pipe()  # both non-inheritable: Ray's processes never hold them
    try:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _WATCHDOG, str(os.getpid()), str(grace_s),
             *(on_death or [])],
            stdin=read_fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=True)
    except OSError:
        os.close(write_fd)
        return None
    finally:
        os.close(read_fd)
    return Reaper(proc, write_fd)
