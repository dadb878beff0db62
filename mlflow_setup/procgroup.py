"""Process groups: is one alive, who is in it, and stop it (SIGTERM, then SIGKILL).

``mlflow server`` spawns uvicorn (and, with job execution on, a job runner and
huey consumers); started with ``start_new_session=True`` they share one process
group, which these helpers signal and watch as a whole. POSIX only; member
lists come from /proc where there is one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["group_alive", "group_members", "stop_process_group"]

_KILL_GRACE_S = 5.0


def group_alive(pgid: int) -> bool:
    """True if process group ``pgid`` has a member that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    members = group_members(pgid)
    # Zombies wait for a parent that may never reap them (PID 1 of a container).
    return members is None or any(state != "Z" for _pid, state in members)


def stop_process_group(
    pgid: int, *, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> bool:
    """SIGTERM group ``pgid``, SIGKILL it after ``timeout`` s; True if SIGKILL was needed.

    ``proc`` (the group leader, when it is our child) is reaped so no zombie remains.
    """
    killed = False
    if _signal_group(pgid, signal.SIGTERM) and not _wait_group(pgid, timeout, proc):
        killed = True
        _signal_group(pgid, signal.SIGKILL)
        _wait_group(pgid, _KILL_GRACE_S, proc)
    if proc is not None:
        try:
            proc.wait(timeout=_KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return killed


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_group(pgid: int, timeout: float, proc: subprocess.Popen[bytes] | None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None:
            proc.poll()  # reap the leader as soon as it exits
        if not group_alive(pgid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def group_members(pgid: int) -> list[tuple[int, str]] | None:
    """(pid, state) of the members of group ``pgid``, read from /proc; None without /proc."""
    proc_dir = Path("/proc")
    if not (proc_dir / "self" / "stat").exists():
        return None
    members = []
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 2 and fields[2] == str(pgid):
            members.append((int(entry.name), fields[0]))
    return members
