"""sweeps.tracking._trial: one trial's run fed from the training loop; non-finite values kept
and tagged, and a slow store never reached from the training thread."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from stability.records import Verdict
from sweeps.common import Outcome
from sweeps.tracking import StudyTracker, TrialTracker
from sweeps.worker import TrialOutcome
from tests.sweeps.tracking.helpers import (
    STABLE,
    as_stored,
    client_for,
    fake_result,
    history,
    settings_for,
    synthetic,
)


def test_nonfinite_values_are_kept_and_tagged(study: StudyTracker) -> None:
    client = client_for(study.sink.uri)
    records, trace = synthetic(300, nan_at=250, inf_at=120)
    run_id = study.create_trial_run(0, STABLE)
    tracker = TrialTracker(settings_for(study, run_id), trial_number=0)
    for i in range(0, 300, 3):
        tracker.on_sync(records[i:i + 3])
    verdict = Verdict("nonfinite", 250, math.nan, 0.0, layer="net.4")
    outcome = TrialOutcome(0, Outcome.EXPLODED, 1e12, f"exploded: {verdict}", steps_run=300)
    result = fake_result(trace, verdict)
    assert tracker.finish(result, outcome) == run_id
    grad = history(client, run_id, "grad_norm/global")
    assert len(grad) == 300
    np.testing.assert_array_equal([v for _, v in grad], as_stored(trace["grad_norm"]))
    layer = dict(history(client, run_id, "grad_norm_log10/net.2"))
    assert 120 not in layer  # inf: no log10 point (the raw trace keeps it) ...
    tags = client.get_run(run_id).data.tags
    assert tags["stabsweep.nonfinite_step"] == "120"  # ... the step is tagged
    assert tags["stabsweep.exploded"] == "true"
    assert tags["stabsweep.onset_step"] == str(result.diagnosis.onset_step)
    assert math.isnan(dict(history(client, run_id, "loss"))[260])
    assert dict(history(client, run_id, "guard/nonfinite_grads"))[120] == 1.0
    # Per-layer: every 10th step, the non-finite ones, and the explosion window (from 20
    # steps before the onset, at most 200 before the verdict) at full resolution.
    start = max(result.diagnosis.onset_step - 20, 250 - 200)
    assert sorted(layer) == sorted({*range(0, 300, 10), *range(start, 300)} - {120})
    assert tracker.stats.values_lost == 0 and tracker.stats.sink.rejected == 0


def test_slow_store_never_blocks_training_and_drops_nothing(
        study: StudyTracker, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training thread only appends to the spool: a store that takes 20 ms per call
    costs on_sync nothing (it is never called there); every point lands when the trial's
    spool is uploaded. No wall-clock bound: what on_sync did is counted instead."""
    import time

    client = client_for(study.sink.uri)
    run_id = study.create_trial_run(0, STABLE)
    tracker = TrialTracker(settings_for(study, run_id), trial_number=0, send_interval=0.05)
    real_run = tracker.sink._run
    calls = []

    def slow_run(op: dict[str, Any], spool: Any = None) -> None:
        calls.append(op["op"])
        time.sleep(0.02)
        real_run(op, spool)

    monkeypatch.setattr(tracker.sink, "_run", slow_run)
    records, trace = synthetic(400)
    for record in records:
        tracker.on_sync([record])
    assert not calls  # nothing was sent from the training thread ...
    sink = tracker.stats.sink
    assert sink is not None and sink.ops_sent == 0
    # ... it was written to the spool: ~5 points a step, full batches of 1000 at the least
    assert sink.values_spooled >= 1000 and tracker.stats.batches >= 1
    tracker.finish(fake_result(trace), TrialOutcome(0, Outcome.COMPLETE, 0.5, "ok",
                                                    steps_run=400))
    assert calls and tracker.stats.blocked == 0
    assert [s for s, _ in history(client, run_id, "grad_norm/global")] == list(range(400))
    assert tracker.stats.values_lost == 0


def test_skipped_updates_are_tagged_and_logged(study: StudyTracker) -> None:
    """Issue 22 item 6: an update the guard dropped showed only in trace.parquet."""
    client = client_for(study.sink.uri)
    records, trace = synthetic(40)
    run_id = study.create_trial_run(0, STABLE)
    tracker = TrialTracker(settings_for(study, run_id), trial_number=0)
    tracker.on_sync(records)
    outcome = TrialOutcome(0, Outcome.COMPLETE, 0.5, "completed 40 steps", steps_run=40,
                           skipped_updates=2)
    tracker.finish(fake_result(trace, None), outcome)
    assert client.get_run(run_id).data.tags["stabsweep.skipped_updates"] == "2"
    assert dict(history(client, run_id, "skipped_updates")) == {40: 2.0}
