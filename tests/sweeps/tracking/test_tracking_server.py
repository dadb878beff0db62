"""sweeps.tracking against a real `mlflow server` on loopback: HTTP, served artifacts, outage.

The server is stopped in the middle of a sweep (one trial half logged, one trial created while
it is down) and started again on the same port and store; ``sync_spool`` must then leave no
value missing and nothing duplicated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlflow_setup import TrackingServer, start_server
from stability.diagnose import diagnose
from stability.records import StepRecord, Verdict
from sweeps.common import Outcome
from sweeps.tracking import StudyTracker, TrialTracker, auto_layer_every, sync_spool
from sweeps.tracking import _sink as sink_module
from sweeps.worker import TrialOutcome, TrialTask, run_trial

pytestmark = pytest.mark.e2e

START_TIMEOUT = 120.0
SPEC = {"study": "outage", "workload": {"name": "deep_mlp", "args": {"depth": 4, "width": 16}}}
LAYERS = ("net.0", "net.2", "net.4")
FLOAT_MAX = 1.7976931348623157e308


def synthetic(n: int, nan_at: int | None = None) -> tuple[list[StepRecord], pd.DataFrame]:
    records, rows = [], []
    for step in range(n):
        norms = np.array([0.1, 0.2, 0.3]) * (1 + step / 100)
        loss, nonfinite = 1.0 / (1 + step), 0
        if nan_at is not None and step >= nan_at:
            norms, loss, nonfinite = norms * math.nan, math.nan, 3
        norm = float(np.sqrt(np.sum(norms ** 2)))
        records.append(StepRecord(step=step, loss=loss, global_norm=norm, layer_norms=norms,
                                  layer_names=LAYERS, lr=0.1, nonfinite=nonfinite))
        rows.append({"step": step, "loss": loss, "grad_norm": norm, "lr": 0.1,
                     "clip_coef": 1.0, "clip_threshold": math.nan, "amp_scale": 1.0,
                     "overflow": False, "nonfinite": nonfinite,
                     **{f"grad_norm/{k}": v for k, v in zip(LAYERS, norms)}})
    return records, pd.DataFrame(rows)


def fake_result(trace: pd.DataFrame, verdict: Verdict | None = None) -> SimpleNamespace:
    return SimpleNamespace(trace=trace, verdict=verdict, diagnosis=diagnose(trace, verdict),
                           evals=[{"eval_loss": 0.25, "step": float(len(trace))}],
                           final_eval={"eval_loss": 0.25}, steps_run=len(trace),
                           wall_time_s=1.0)


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TrackingServer]:
    monkeypatch.chdir(tmp_path)
    # What quick_http_failures() would set, restored after the test.
    for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
                        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sink_module, "_WARNED", set())
    monkeypatch.setenv("STABSWEEP_TRACKING_UPLOAD", "inline")  # uploads at finish, in-process
    handle = start_server(workdir=tmp_path / "server", timeout=START_TIMEOUT)
    yield handle
    handle.stop()


def test_server_outage_mid_sweep_then_sync(server: TrackingServer, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    spool = tmp_path / "spool"
    study = StudyTracker.open("outage", SPEC, server.url, spool_dir=spool)
    assert study.ui_url() == (f"{server.url}/#/experiments/{study.experiment_id}/runs"
                              "?workflowType=machine_learning&viewStateShareKey=stabsweep")

    # Trial 0: a real training run, logged over HTTP, artifacts through the server.
    run0 = study.create_trial_run(0, {"lr": 1e-3})
    settings0 = study.settings.for_run(run0)
    settings0.plots = "all"
    out0 = run_trial(TrialTask(
        study_name="outage", trial_number=0, trial_id=0, config={"lr": 1e-3},
        workload="deep_mlp", workload_args={"depth": 4, "width": 16}, steps=40, eval_every=20,
        report_every=10, seed=0, metric="eval_loss", direction="minimize", tracking=settings0))
    assert out0.outcome == Outcome.COMPLETE and out0.mlflow_run_id == run0

    # Trial 1: half its steps land, then the server goes away.
    records1, trace1 = synthetic(600)
    run1 = study.create_trial_run(1, {"lr": 0.1})
    tracker1 = TrialTracker(study.settings.for_run(run1), trial_number=1)
    for i in range(0, 300, 5):
        tracker1.on_sync(records1[i:i + 5])
    assert tracker1.flush(timeout=60)
    server.stop()
    with pytest.warns(RuntimeWarning, match="unreachable") as caught:
        run2 = study.create_trial_run(2, {"lr": 5.0})  # the driver cannot create it now
    assert run2.startswith("offline-")
    for i in range(300, 600, 5):
        tracker1.on_sync(records1[i:i + 5])
    tracker1.finish(fake_result(trace1), TrialOutcome(1, Outcome.COMPLETE, 0.25, "ok",
                                                      steps_run=600))
    # Trial 2 runs under the placeholder id and explodes; everything goes to the spool.
    records2, trace2 = synthetic(80, nan_at=70)
    tracker2 = TrialTracker(study.settings.for_run(run2), trial_number=2)
    for record in records2:
        tracker2.on_sync([record])
    verdict = Verdict("nonfinite", 70, math.nan, 0.0, layer="net.0")
    tracker2.finish(fake_result(trace2, verdict),
                    TrialOutcome(2, Outcome.EXPLODED, 1e12, f"exploded: {verdict}", steps_run=80))
    assert len([w for w in caught if "unreachable" in str(w.message)]) == 1
    assert tracker1.stats.sink.ops_spooled > 0 and tracker2.stats.sink.ops_sent == 0
    assert tracker1.stats.values_lost == tracker2.stats.values_lost == 0

    # The server comes back on the same port and store: upload the spool.
    server = start_server(port=server.port, workdir=tmp_path / "server",
                          timeout=START_TIMEOUT)
    try:
        report = sync_spool(spool, server.url)
        assert report.pending == 0 and report.rejected == 0, report.errors
        assert report.runs_created == 1
        client = MlflowClient(server.url)
        runs = {r.info.run_name: r for r in client.search_runs([study.experiment_id])}
        assert sorted(runs) == ["outage", "trial-0", "trial-1", "trial-2 [exploded @70]"]

        one = runs["trial-1"]
        assert one.info.run_id == run1 and one.info.status == "FINISHED"
        grad = history(client, run1, "grad_norm/global")
        assert [s for s, _ in grad] == list(range(600))  # no step missing or doubled
        np.testing.assert_allclose([v for _, v in grad], trace1["grad_norm"], rtol=1e-12)
        every = auto_layer_every(len(LAYERS))
        assert [s for s, _ in history(client, run1, "grad_norm_log10/net.4")] == [
            *range(0, 600, every), 599]
        assert one.data.tags["stabsweep.state"] == "complete"

        two = runs["trial-2 [exploded @70]"]
        assert two.data.tags["mlflow.parentRunId"] == study.parent_run_id
        assert two.data.params["lr"] == "5.0"
        assert two.data.tags["stabsweep.exploded"] == "true"
        assert two.data.tags["stabsweep.nonfinite_step"] == "70"
        assert two.info.status == "KILLED"
        grad2 = history(client, two.info.run_id, "grad_norm/global")
        assert [s for s, _ in grad2] == list(range(80))
        assert all(math.isnan(v) for _, v in grad2[70:])
        artifacts = {a.path for a in client.list_artifacts(two.info.run_id)}
        assert {"trace.parquet", "grad_norm_trace.png", "diagnosis.json"} <= artifacts
        local = client.download_artifacts(two.info.run_id, "trace.parquet", str(tmp_path))
        assert len(pd.read_parquet(local)) == 80

        zero = client.get_run(run0)
        assert len(history(client, run0, "grad_norm/global")) == out0.steps_run
        local = client.download_artifacts(run0, "trace.parquet", str(tmp_path / "t0"))
        assert len(pd.read_parquet(local)) == out0.steps_run
        assert "layer_heatmap.png" in {a.path for a in client.list_artifacts(run0)}
        assert zero.info.status == "FINISHED"

        # A second sync finds nothing to do and duplicates nothing.
        assert sync_spool(spool, server.url).sent == 0
        assert len(history(client, run1, "grad_norm/global")) == 600
        final = study.finish_study({}, {"n_trials": 3})
        assert final.pending == 0
        assert client.get_run(study.parent_run_id).info.status == "FINISHED"
    finally:
        server.stop()
