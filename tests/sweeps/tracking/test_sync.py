"""sweeps.tracking._sync (with _spool): a store that is down gets everything spooled, and
sync_spool uploads it once, idempotently."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stability.records import Verdict
from sweeps.common import Outcome
from sweeps.tracking import StudyTracker, TrialTracker, sync_spool
from sweeps.tracking import _sink as sink_module
from sweeps.worker import TrialOutcome
from tests.sweeps.tracking.helpers import (
    EXPLODES,
    STABLE,
    as_stored,
    client_for,
    fake_result,
    history,
    settings_for,
    synthetic,
)


class _Outage:
    """Makes every MLflow call of the tracking layer fail like an unreachable server."""

    def __init__(self) -> None:
        self.down = False
        self.failed_calls = 0

    def wrap(self, client: Any) -> Any:
        outage = self

        class Flaky:
            def __getattr__(self, name: str) -> Any:
                attr = getattr(client, name)
                if not callable(attr):
                    return attr

                def call(*args: Any, **kwargs: Any) -> Any:
                    if outage.down:
                        import requests

                        outage.failed_calls += 1
                        raise requests.exceptions.ConnectionError("simulated outage")
                    return attr(*args, **kwargs)

                return call

        return Flaky()


@pytest.fixture
def outage(monkeypatch: pytest.MonkeyPatch) -> _Outage:
    state = _Outage()
    clients: dict[int, Any] = {}

    def client(self: Any) -> Any:
        if id(self) not in clients:
            from mlflow import MlflowClient

            clients[id(self)] = state.wrap(MlflowClient(self.uri))
        return clients[id(self)]

    monkeypatch.setattr(sink_module.Sink, "client", property(client))
    monkeypatch.setattr(sink_module.Sink, "reachable", lambda self: not state.down)
    monkeypatch.setattr(sink_module, "_WARNED", set())
    return state


def test_store_down_spools_everything_and_sync_uploads_once(
        study: StudyTracker, outage: _Outage, tmp_path: Path) -> None:
    client = client_for(study.sink.uri)
    first = study.create_trial_run(0, STABLE)
    outage.down = True
    with pytest.warns(RuntimeWarning, match="unreachable") as caught:
        placeholder = study.create_trial_run(1, EXPLODES)
        study.create_trial_run(2, STABLE)
    assert placeholder.startswith("offline-")
    assert len([w for w in caught if "unreachable" in str(w.message)]) == 1  # warned once
    records, trace = synthetic(120, nan_at=100)
    tracker = TrialTracker(settings_for(study, placeholder), trial_number=1)
    for record in records:
        tracker.on_sync([record])
    verdict = Verdict("nonfinite", 100, math.nan, 0.0, layer="net.4")
    outcome = TrialOutcome(1, Outcome.EXPLODED, 1e12, f"exploded: {verdict}", steps_run=120)
    assert tracker.finish(fake_result(trace, verdict), outcome) == placeholder
    study.close_trial_run(first, Outcome.WORKER_LOST, "lost while the server was down")
    assert tracker.stats.sink.ops_spooled > 0 and tracker.stats.sink.ops_sent == 0
    assert len(client.search_runs([study.experiment_id])) == 2  # parent + trial 0 only

    outage.down = False
    report = sync_spool(tmp_path / "spool", study.sink.uri, prune=False)
    assert report.pending == 0 and report.rejected == 0 and report.runs_created == 2
    runs = {r.info.run_name: r for r in client.search_runs([study.experiment_id])}
    assert sorted(runs) == ["tiny", "trial-0", "trial-1 [exploded @100]", "trial-2"]
    boom = runs["trial-1 [exploded @100]"]
    assert boom.data.tags["mlflow.parentRunId"] == study.parent_run_id
    assert boom.data.tags["stabsweep.exploded"] == "true"
    assert boom.data.tags["stabsweep.nonfinite_step"] == "100"
    assert boom.info.status == "KILLED"
    assert runs["trial-0"].info.status == "FAILED"
    grad = history(client, boom.info.run_id, "grad_norm/global")
    np.testing.assert_array_equal([v for _, v in grad], as_stored(trace["grad_norm"]))
    assert [s for s, _ in grad] == list(range(120))
    artifacts = sorted(a.path for a in client.list_artifacts(boom.info.run_id))
    assert "trace.parquet" in artifacts and "layer_heatmap.png" in artifacts
    assert boom.data.params["optimizer"] == "sgd"

    # Replay is idempotent: a second sync sends nothing; even with the done-marks lost, the
    # store keeps one point per step and one run per trial.
    assert sync_spool(tmp_path / "spool", study.sink.uri, prune=False).sent == 0
    for done in (tmp_path / "spool").glob("*.done"):
        done.unlink()
    again = sync_spool(tmp_path / "spool", study.sink.uri)
    assert again.pending == 0 and again.sent > 0
    assert len(history(client, boom.info.run_id, "grad_norm/global")) == 120
    assert len(client.search_runs([study.experiment_id])) == 4
    assert not list((tmp_path / "spool").glob("*.jsonl"))  # pruned once all landed
