"""``sync_spool``: upload every spooled operation in a spool directory (``stabsweep sync``)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_setup import redact
from sweeps.tracking._sink import Sink
from sweeps.tracking._spool import Spool, spool_files

__all__ = ["SyncReport", "end_orphaned_run", "sync_spool"]


@dataclass
class SyncReport:
    """What ``sync_spool`` did. ``pending`` > 0: the store went away again; run it later."""

    files: int = 0
    sent: int = 0
    """operations that landed."""
    values: int = 0
    """metric points among them."""
    runs_created: int = 0
    pending: int = 0
    rejected: int = 0
    """operations the store refused for good (kept in ``<writer>.rejected``)."""
    skipped: list[str] = field(default_factory=list)
    """spool files written for another tracking URI (left alone)."""
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.pending == 0 and self.rejected == 0

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        text = (f"{self.sent} operations uploaded ({self.values} metric values, "
                f"{self.runs_created} runs created) from {self.files} spool files; "
                f"{self.pending} pending, {self.rejected} refused")
        if self.skipped:
            text += f"; {len(self.skipped)} files for another tracking URI left alone"
        return text + "."


def sync_spool(spool_dir: str | Path, tracking_uri: str, *, prune: bool = True
               ) -> SyncReport:
    """Upload what writers spooled in ``spool_dir`` while ``tracking_uri`` was unreachable.

    Safe to run while a sweep runs and to run again: each file is locked while it uploads
    and each operation is marked done once it lands. Files spooled for another tracking URI
    are skipped. With ``prune``, fully uploaded files (and their artifact copies) are deleted.
    """
    report = SyncReport()
    spool_dir = Path(spool_dir)
    label = redact(tracking_uri)
    spools: list[Spool] = []
    for path in spool_files(spool_dir):
        spool = Spool.open_existing(path)
        if spool.uri_label and spool.uri_label != label:
            report.skipped.append(f"{path.name}: spooled for {spool.uri_label}")
            continue
        spools.append(spool)
    report.files = len(spools)
    if not spools:
        return report
    sink = Sink(tracking_uri, spool_dir, name=f"sync-{socket.gethostname()}-{os.getpid()}")
    left = {spool.path: len(spool.pending()) for spool in spools}
    progress = True
    # A worker's file may name a run that the driver's file creates: go round until stuck.
    while progress and any(left.values()):
        progress = False
        for spool in spools:
            if not left[spool.path]:
                continue
            remaining = sink.upload(spool)
            progress = progress or remaining < left[spool.path]
            left[spool.path] = remaining
    stats = sink.stats
    report.sent, report.values = stats.ops_sent, stats.values_sent
    report.runs_created, report.rejected = stats.runs_created, stats.rejected
    report.errors = list(stats.errors)
    report.pending = sum(left.values())
    if prune:
        for spool in spools:
            if not left[spool.path] and not spool.pending():
                _remove(spool)
    return report


def _remove(spool: Spool) -> None:
    if spool.rejected_path.exists():
        return  # keep what the store refused, for a person to look at
    for path in (spool.path, spool.done_path, spool.stem.with_name(spool.stem.name + ".lock")):
        path.unlink(missing_ok=True)
    shutil.rmtree(spool.files_dir, ignore_errors=True)


def end_orphaned_run(tracking_uri: str, spool_dir: str | Path, run_id: str,
                     reason: str = "its driver stopped (killed) before the sweep ended; "
                                   "rerun the sweep to resume it") -> None:
    """End a study's run whose driver died without ending it (``kill -9``): KILLED, with why,
    as its trials' runs are ended. Spooled if the store is down; a resume sets it RUNNING."""
    from sweeps.tracking._settings import TAG_REASON

    sink = Sink(tracking_uri, spool_dir, name=f"orphan-{socket.gethostname()}-{os.getpid()}")
    sink.submit({"op": "log_batch", "run": run_id, "tags": [[TAG_REASON, reason]]})
    sink.submit({"op": "status", "run": run_id, "status": "KILLED",
                 "end_time": int(time.time() * 1000)})
