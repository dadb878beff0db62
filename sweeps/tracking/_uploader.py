"""The uploader: one process per host and spool folder that sends what trials spooled.

Workers write their trials to the spool (``_trial``); this process tails every writer's file
in the folder, sends each new operation in order (``Sink``: ``log_batch`` of up to 1000
points, artifacts, the plots of exploded trials, run status) and marks it done once it landed.
It never runs in a trial's process, so the MLflow client's Python work does not compete with
training for the GIL. While the store is down it retries every few seconds; the operations stay
in the spool, where the driver's end-of-sweep sync or ``stabsweep sync`` also finds them.

It runs at a lower CPU priority (nice 10, its session's scheduling group too: see
:func:`lower_priority`): on a host whose cores the trials keep busy, the store's work waits
for idle CPU instead of slowing them down.

Started by :func:`ensure_uploader` (the driver at ``StudyTracker.open``, any worker's first
TrialTracker); a lock file keeps it to one per folder; it exits after ``_IDLE_S`` seconds with
nothing to send, or when its folder is removed.

    python -m sweeps.tracking._uploader <spool_dir> <tracking_uri>
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["ensure_uploader", "kick", "uploader_running"]

_LOCK = "uploader.lock"
_KICK = "uploader.kick"
_LOG = "uploader.log"
_POLL_S = 0.25
_IDLE_S = float(os.environ.get("STABSWEEP_UPLOADER_IDLE_S", "120"))


def _lock_path(spool_dir: str | Path) -> Path:
    return Path(spool_dir) / _LOCK


def uploader_running(spool_dir: str | Path) -> bool:
    """True while an uploader holds the folder's lock."""
    path = _lock_path(spool_dir)
    if not path.exists():
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def ensure_uploader(spool_dir: str | Path, tracking_uri: str) -> bool:
    """Start the folder's uploader unless one runs; False if it could not be started."""
    folder = Path(spool_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if uploader_running(folder):
            return True
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
        with open(folder / _LOG, "ab") as log:
            subprocess.Popen([sys.executable, "-m", "sweeps.tracking._uploader", str(folder),
                              tracking_uri], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             env=env, start_new_session=True, close_fds=True)
    except OSError:
        return False
    return True


def kick(spool_dir: str | Path) -> None:
    """Wake the uploader now (it polls every 0.25 s anyway)."""
    with contextlib.suppress(OSError):
        (Path(spool_dir) / _KICK).touch()


class _Tail:
    """One writer's file: the operations after ``offset`` not marked done yet."""

    def __init__(self, path: Path) -> None:
        from sweeps.tracking._spool import Spool

        self.spool = Spool.open_existing(path)
        self.offset = 0
        self.done = self.spool.done_ids()
        self.queue: list[dict[str, Any]] = []

    def read(self) -> None:
        try:
            with open(self.spool.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a line being appended now is read next time
        for line in data[:end].splitlines():
            if line.strip():
                op = json.loads(line)
                if op.get("op") != "header" and int(op["id"]) not in self.done:
                    self.queue.append(op)
        self.offset += end


def _send(sink: Any, tail: _Tail) -> bool:
    """Send the tail's queued operations in order; False when the store is unreachable."""
    from sweeps.tracking._failures import TrackingUnavailable
    from sweeps.tracking._failures import Unresolved as _Unresolved
    from sweeps.tracking._failures import is_transient as _is_transient

    if not tail.queue:
        return True
    with tail.spool.locked():
        done = tail.spool.done_ids()  # another sync may have sent some meanwhile
        while tail.queue:
            op = tail.queue[0]
            if int(op["id"]) in done:
                tail.queue.pop(0)
                continue
            try:
                sink._run(op, tail.spool)
            except (_Unresolved, TrackingUnavailable):
                return False
            except Exception as exc:
                if _is_transient(exc):
                    return False
                sink._reject(op, exc)
                tail.spool.mark_rejected(int(op["id"]), f"{type(exc).__name__}: {exc}")
            else:
                tail.spool.mark_done(int(op["id"]))
            tail.queue.pop(0)
    return True


NICE = int(os.environ.get("STABSWEEP_UPLOADER_NICE", "10"))
"""How far the uploader steps back for the trials (0: not at all); the environment variable
reaches it through the worker that starts it."""


def lower_priority(nice: int = NICE) -> None:
    """Take only the CPU the trials leave idle: on a busy host the trials come first.

    ``os.nice`` alone does not do it where the kernel groups tasks by session
    (``sched_autogroup``, on by default in most distributions): the uploader runs in a session
    of its own, and the scheduler shares CPU between sessions first, so a niced process in its
    own session still gets as much as all the trial workers together. The session's group has
    a nice value of its own, in ``/proc/self/autogroup``: set both."""
    with contextlib.suppress(OSError):
        os.nice(nice)
    with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as group:
        group.write(str(nice))


def run(spool_dir: str | Path, tracking_uri: str) -> None:
    """The uploader's loop (this process holds the folder's lock until it exits)."""
    import warnings

    from mlflow_setup import redact
    from sweeps.tracking._sink import Sink

    warnings.filterwarnings("ignore")
    folder = Path(spool_dir)
    fd = os.open(_lock_path(folder), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another uploader has the folder
    lower_priority()
    sink = Sink(tracking_uri, folder, name=f"uploader-{os.getpid()}")
    label = redact(tracking_uri)
    tails: dict[Path, _Tail] = {}
    idle_since = time.monotonic()
    retry_at = 0.0
    kick_path = folder / _KICK
    last_kick = 0.0
    while folder.is_dir():
        busy = False
        if time.monotonic() >= retry_at:
            for path in sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime):
                if path.name.startswith("uploader-"):
                    continue
                tail = tails.get(path)
                if tail is None:
                    tail = tails[path] = _Tail(path)
                    if tail.spool.uri_label and tail.spool.uri_label != label:
                        continue
                tail.read()
                if tail.queue:
                    busy = True
                    if not _send(sink, tail):
                        retry_at = time.monotonic() + 3.0  # store down: keep it spooled
                        break
            tails = {p: t for p, t in tails.items() if p.exists()}
        if busy:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > _IDLE_S:
            break
        deadline = time.monotonic() + _POLL_S
        while time.monotonic() < deadline:  # wake early on a kick
            try:
                mtime = kick_path.stat().st_mtime
            except OSError:
                mtime = 0.0
            if mtime != last_kick:
                last_kick = mtime
                break
            time.sleep(0.02)
    os.close(fd)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
