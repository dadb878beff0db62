"""The spool: MLflow operations that could not be sent yet, kept on disk until they land.

One writer (a driver's StudyTracker, a worker's TrialTracker) owns one append-only file of
operations, one JSON object per line, in the order they were issued::

    <spool_dir>/<writer>.jsonl        {"op": "log_batch", "id": 7, "run": ..., "metrics": ...}
    <spool_dir>/<writer>.done         ids that landed (or were refused, see .rejected)
    <spool_dir>/<writer>.rejected     ids the store refused for good, with its message
    <spool_dir>/<writer>.files/<id>/  copies of artifact files
    <spool_dir>/runs/<placeholder>    real run id of a run created while the store was down

Replay is idempotent: an operation is marked done right after it lands, metric points keep
the timestamp they were spooled with (SQL stores drop exact duplicates: key, timestamp, step
and value are the metric's primary key), tags and params overwrite with the same value, and a
run created from the spool carries its placeholder id as a tag, so it is found, not created
twice. A file lock serialises the writer's own uploads with ``stabsweep sync``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["PLACEHOLDER_PREFIX", "Spool", "is_placeholder", "resolve_placeholder",
           "spool_files"]

PLACEHOLDER_PREFIX = "offline-"
_RUNS_DIR = "runs"


def is_placeholder(run_id: str | None) -> bool:
    return bool(run_id) and str(run_id).startswith(PLACEHOLDER_PREFIX)


def new_placeholder() -> str:
    return PLACEHOLDER_PREFIX + uuid.uuid4().hex


def resolve_placeholder(spool_dir: str | Path, run_id: str) -> str | None:
    """The real id of a run created from the spool, None while it is not created yet."""
    if not is_placeholder(run_id):
        return run_id
    try:
        return (Path(spool_dir) / _RUNS_DIR / run_id).read_text().strip() or None
    except OSError:
        return None


def record_placeholder(spool_dir: str | Path, placeholder: str, run_id: str) -> None:
    runs = Path(spool_dir) / _RUNS_DIR
    runs.mkdir(parents=True, exist_ok=True)
    tmp = runs / f".{placeholder}.{os.getpid()}.tmp"
    tmp.write_text(run_id)
    os.replace(tmp, runs / placeholder)  # atomic: a reader sees nothing or the whole id


def spool_files(spool_dir: str | Path) -> list[Path]:
    """Every writer's operation file in ``spool_dir``, oldest first."""
    root = Path(spool_dir)
    if not root.is_dir():
        return []
    return sorted(root.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name))


class Spool:
    """One writer's operation file. Appends are single ``write`` calls of whole lines."""

    def __init__(self, spool_dir: str | Path, uri_label: str, name: str | None = None,
                 path: Path | None = None) -> None:
        self.root = Path(spool_dir)
        if path is None:
            name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            path = self.root / f"{name}.jsonl"
        self.path = path
        self.uri_label = uri_label
        self._next_id: int | None = None

    @classmethod
    def open_existing(cls, path: Path) -> Spool:
        header = _read_header(path)
        return cls(path.parent, header.get("uri", ""), path=path)

    # -------------------------------------------------------------- paths
    @property
    def stem(self) -> Path:
        return self.path.with_suffix("")

    @property
    def done_path(self) -> Path:
        return self.stem.with_name(self.stem.name + ".done")

    @property
    def rejected_path(self) -> Path:
        return self.stem.with_name(self.stem.name + ".rejected")

    @property
    def files_dir(self) -> Path:
        return self.stem.with_name(self.stem.name + ".files")

    # -------------------------------------------------------------- writing
    def append(self, op: dict[str, Any]) -> dict[str, Any]:
        """Write ``op`` (given the next id) as one line; returns it."""
        op = {**op, "id": self.reserve_id()}
        self._write_line(op)
        self._next_id = op["id"] + 1
        return op

    def reserve_id(self) -> int:
        """The id the next ``append`` will use (names the op's artifact copy)."""
        if self._next_id is None:
            self._next_id = self._last_id() + 1
            if self._next_id == 0:
                self.root.mkdir(parents=True, exist_ok=True)
                self._write_line({"op": "header", "id": 0, "uri": self.uri_label,
                                  "host": socket.gethostname(), "pid": os.getpid()})
                self._next_id = 1
        return self._next_id

    def stash(self, source: str | Path, op_id: int) -> str:
        """Copy a file or a directory's content into the spool; the copy's relative path."""
        source = Path(source)
        target = self.files_dir / str(op_id)
        if target.exists():
            shutil.rmtree(target)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.mkdir(parents=True)
            shutil.copy2(source, target / source.name)
        return str(target.relative_to(self.root))

    def _write_line(self, data: dict[str, Any]) -> None:
        line = json.dumps(data, separators=(",", ":")) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _last_id(self) -> int:
        last = -1
        for op in _read_lines(self.path):
            last = max(last, int(op.get("id", -1)))
        return last

    # -------------------------------------------------------------- reading
    def pending(self) -> list[dict[str, Any]]:
        """Operations not landed (nor refused) yet, in the order they were written."""
        done = self.done_ids()
        return [op for op in _read_lines(self.path)
                if op.get("op") != "header" and int(op["id"]) not in done]

    def done_ids(self) -> set[int]:
        try:
            text = self.done_path.read_text()
        except OSError:
            return set()
        return {int(x) for x in text.split() if x.isdigit()}

    def mark_done(self, op_id: int) -> None:
        fd = os.open(self.done_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{op_id}\n".encode())
        finally:
            os.close(fd)

    def mark_rejected(self, op_id: int, message: str) -> None:
        with open(self.rejected_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"id": op_id, "error": message[:2000]}) + "\n")
        self.mark_done(op_id)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock for uploading this file (writer and ``stabsweep sync``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.stem.with_name(self.stem.name + ".lock")
        fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """Complete lines only: a line being appended right now is left for the next read."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.endswith("\n") and line.strip():
                    yield json.loads(line)
    except FileNotFoundError:
        return


def _read_header(path: Path) -> dict[str, Any]:
    for op in _read_lines(path):
        return op if op.get("op") == "header" else {}
    return {}
