"""sweeps.tracking._uploader: the per-host uploader process sends a finished trial's spool."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from stability.records import Verdict
from sweeps.common import Outcome
from sweeps.tracking import StudyTracker, TrialTracker
from sweeps.worker import TrialOutcome
from tests.sweeps.tracking.helpers import (
    STABLE,
    client_for,
    fake_result,
    history,
    settings_for,
    synthetic,
)


def test_uploader_process_sends_a_finished_trial(study: StudyTracker,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Background mode: finish returns at once; this host's uploader process sends it."""
    from sweeps.tracking._uploader import uploader_running

    monkeypatch.setenv("STABSWEEP_UPLOADER_IDLE_S", "5")
    client = client_for(study.sink.uri)
    run_id = study.create_trial_run(0, STABLE)
    settings = settings_for(study, run_id)
    settings.upload = "background"
    tracker = TrialTracker(settings, trial_number=0)
    records, trace = synthetic(120, nan_at=100)
    for record in records:
        tracker.on_sync([record])
    verdict = Verdict("nonfinite", 100, math.nan, 0.0, layer="net.4")
    tracker.finish(fake_result(trace, verdict),
                   TrialOutcome(0, Outcome.EXPLODED, 1e12, f"exploded: {verdict}", steps_run=120))
    assert tracker.stats.sink.ops_sent == 0  # the worker sent nothing itself
    assert tracker.wait_landed(timeout=120), (Path(settings.spool_dir) / "uploader.log"
                                              ).read_text()[-2000:]
    assert uploader_running(settings.spool_dir)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["stabsweep.exploded"] == "true"
    assert [s for s, _ in history(client, run_id, "grad_norm/global")] == list(range(120))
    artifacts = sorted(a.path for a in client.list_artifacts(run_id))
    assert artifacts == ["diagnosis.json", "grad_norm_trace.png", "layer_heatmap.png",
                         "trace.parquet"]  # the plots were drawn by the uploader


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(),
                    reason="the kernel does not group tasks by session (no sched_autogroup)")
def test_the_uploader_lowers_its_session_group_not_only_its_nice() -> None:
    """The uploader runs in a session of its own; with sched_autogroup the scheduler shares the
    CPU between sessions first, so only the group's nice keeps it behind the trials."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os
        from sweeps.tracking._uploader import NICE, lower_priority
        lower_priority()
        print(os.nice(0), NICE, open("/proc/self/autogroup").read().split()[-1])
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          start_new_session=True, timeout=60, check=True)
    process_nice, wanted, group_nice = (int(v) for v in done.stdout.split())
    assert process_nice >= wanted and group_nice == wanted
