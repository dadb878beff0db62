"""sweeps.tracking._sink: several writers on one SQLite store lose nothing; a locked database
is retried, not dropped."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sweeps.common import Outcome
from sweeps.tracking import StudyTracker, TrackingSettings, TrialTracker
from sweeps.tracking import _sink as sink_module
from sweeps.worker import TrialOutcome
from tests.sweeps.tracking.helpers import (
    STABLE,
    client_for,
    fake_result,
    history,
    settings_for,
    sqlite_uri,
    synthetic,
)


def _writer(uri: str, settings: TrackingSettings, number: int, steps: int) -> dict[str, Any]:
    records, trace = synthetic(steps)
    tracker = TrialTracker(settings, trial_number=number, send_interval=0.05)
    for i in range(0, steps, 4):
        tracker.on_sync(records[i:i + 4])
    tracker.finish(fake_result(trace), TrialOutcome(number, Outcome.COMPLETE, 0.5, "ok",
                                                    steps_run=steps))
    stats = tracker.stats.sink
    return {"rejected": stats.rejected, "spooled": stats.ops_spooled, "errors": stats.errors,
            "lock_retries": stats.lock_retries, "points": tracker.stats.points}


def test_concurrent_writers_on_one_sqlite_store(study: StudyTracker) -> None:
    steps, n = 2000, 3
    runs = [study.create_trial_run(i, STABLE) for i in range(n)]
    # A process pool that fails loudly: a writer process that dies (a crash, an import error
    # while unpickling the task) raises BrokenProcessPool here, where multiprocessing.Pool
    # would wait forever for the lost task (seen: a fast-suite run hung at this test).
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        writers = [pool.submit(_writer, study.sink.uri, settings_for(study, run, 1), i, steps)
                   for i, run in enumerate(runs)]
        results = [writer.result() for writer in writers]
    client = client_for(study.sink.uri)
    for run_id, result in zip(runs, results):
        assert result["rejected"] == 0 and result["errors"] == []
        assert [s for s, _ in history(client, run_id, "grad_norm/global")] == list(range(steps))
        assert [s for s, _ in history(client, run_id, "grad_norm_log10/net.2")] == list(
            range(steps))
        assert client.get_run(run_id).info.status == "FINISHED"
    # ~5 points per step each: 3 x 10,000 values written at once without a single loss.
    assert sum(r["points"] for r in results) >= n * steps * 5


def test_locked_database_is_retried_not_dropped(tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException

    sink = sink_module.Sink(sqlite_uri(tmp_path), tmp_path / "spool", lock_wait_s=30.0)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) <= 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked",
                                  error_code="TEMPORARILY_UNAVAILABLE")
        return "landed"

    assert sink._retry_locked(flaky) == "landed"
    assert len(calls) == 4 and sink.stats.lock_retries == 3
    def always_locked() -> None:
        raise MlflowException("database is locked", error_code="TEMPORARILY_UNAVAILABLE")

    sink.lock_wait_s = 0.0  # a lock that outlasts the wait: the caller spools the operation
    with pytest.raises(sink_module.TrackingUnavailable, match="stayed locked for 0 s"):
        sink._retry_locked(always_locked)
