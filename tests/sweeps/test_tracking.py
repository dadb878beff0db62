"""sweeps.tracking on a SQLite store: the sweep's runs, traces, tags, artifacts, spool, locks."""

from __future__ import annotations

import json
import math
import multiprocessing
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from stability.diagnose import diagnose
from stability.records import StepRecord, Verdict
from sweeps import keys
from sweeps.objective import TrialOutcome, TrialTask, run_trial
from sweeps.tracking import (
    StudyTracker,
    TrackingSettings,
    TrialTracker,
    auto_layer_every,
    sync_spool,
)
from sweeps.tracking import _sink as sink_module
from sweeps.tracking._series import RunLength, TraceEncoder, metric_key

REPO = Path(__file__).resolve().parents[2]
SPEC = {"study": "tiny", "description": "tracking test",
        "workload": {"name": "deep_mlp", "args": {"depth": 4, "width": 16}},
        "space": {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}}}
STABLE = {"lr": 1e-3}
EXPLODES = {"optimizer": "sgd", "lr": 5.0}
CLIPPED = {"lr": 1e-2, "clip_method": "norm", "clip_threshold": 0.5}
FLOAT_MAX = 1.7976931348623157e308


def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def client_for(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(uri)


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def as_stored(values: np.ndarray) -> np.ndarray:
    """What a SQL store gives back: NaN stays NaN, +-inf becomes +-1.8e308."""
    return np.clip(np.asarray(values, dtype=np.float64), -FLOAT_MAX, FLOAT_MAX)


def task(tracking: TrackingSettings, number: int, config: dict[str, Any],
         steps: int = 40) -> TrialTask:
    return TrialTask(study_name="tiny", trial_number=number, trial_id=number, config=config,
                     workload="deep_mlp", workload_args={"depth": 4, "width": 16}, steps=steps,
                     eval_every=20, report_every=10, seed=0, metric="eval_loss",
                     direction="minimize", tracking=tracking)


# ---------------------------------------------------------------------------- synthetic runs
LAYERS = ("net.0", "net.2", "net.4")


def synthetic(n: int, *, nan_at: int | None = None, inf_at: int | None = None,
              lr_change_at: int | None = None) -> tuple[list[StepRecord], pd.DataFrame]:
    """n steps of records and the matching trace (norms grow 2x per step after nan_at - 5)."""
    records, rows = [], []
    for step in range(n):
        norms = np.array([0.1, 0.2, 0.3]) * (1 + step / 100)
        if nan_at is not None and step >= nan_at - 5:
            norms = norms * 2.0 ** (step - nan_at + 6)
        loss = 1.0 / (1 + step)
        nonfinite = 0
        if nan_at is not None and step >= nan_at:
            norms[2], loss, nonfinite = math.nan, math.nan, 1
        if inf_at is not None and step == inf_at:
            norms[1], nonfinite = math.inf, 1
        global_norm = float(np.sqrt(np.sum(norms ** 2)))
        lr = 0.1 if lr_change_at is None or step < lr_change_at else 0.05
        records.append(StepRecord(step=step, loss=loss, global_norm=global_norm,
                                  layer_norms=norms, layer_names=LAYERS, lr=lr,
                                  nonfinite=nonfinite))
        rows.append({"step": step, "loss": loss, "grad_norm": global_norm, "lr": lr,
                     "clip_coef": 1.0, "clip_threshold": math.nan, "amp_scale": 1.0,
                     "overflow": False, "nonfinite": nonfinite,
                     **{f"grad_norm/{name}": v for name, v in zip(LAYERS, norms)}})
    return records, pd.DataFrame(rows)


def fake_result(trace: pd.DataFrame, verdict: Verdict | None = None) -> SimpleNamespace:
    n = len(trace)
    return SimpleNamespace(trace=trace, verdict=verdict, diagnosis=diagnose(trace, verdict),
                           evals=[{"eval_loss": 0.5, "step": float(n)}],
                           final_eval={"eval_loss": 0.5}, steps_run=n, wall_time_s=1.0)


def settings_for(study: StudyTracker, run_id: str, layer_every: int = 10) -> TrackingSettings:
    settings = study.settings.for_run(run_id)
    settings.layer_every = layer_every
    return settings


@pytest.fixture(autouse=True)
def inline_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials upload in-process when they finish (deterministic); the uploader process has
    its own test."""
    monkeypatch.setenv("STABSWEEP_TRACKING_UPLOAD", "inline")


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty MLflow SQLite file (creating the tables takes seconds)."""
    folder = tmp_path_factory.mktemp("store")
    client_for(sqlite_uri(folder)).search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path
          ) -> Iterator[StudyTracker]:
    monkeypatch.chdir(tmp_path)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    yield StudyTracker.open("tiny", SPEC, sqlite_uri(tmp_path), spool_dir=tmp_path / "spool")


# ---------------------------------------------------------------------------- settings
def test_settings_validate_and_pickle(tmp_path: Path) -> None:
    settings = TrackingSettings(tracking_uri="sqlite:////x/mlflow.db", experiment_id="1",
                                spool_dir=str(tmp_path))
    assert pickle.loads(pickle.dumps(settings.for_run("abc"))).run_id == "abc"
    assert settings.run_id is None
    with pytest.raises(ValueError, match="layer_every must be an integer >= 1 or None"):
        TrackingSettings(tracking_uri="sqlite:////x.db", experiment_id="1", layer_every=0)
    with pytest.raises(ValueError, match="spool_dir must be an absolute path"):
        TrackingSettings(tracking_uri="sqlite:////x.db", experiment_id="1", spool_dir="rel")
    with pytest.raises(ValueError, match="plots must be one of all, exploded, none; got 'some'"):
        TrackingSettings(tracking_uri="sqlite:////x.db", experiment_id="1", plots="some")
    with pytest.raises(ValueError, match="tracking_uri must be a non-empty URI"):
        TrackingSettings(tracking_uri=" ", experiment_id="1")


def test_imports_stay_light() -> None:
    code = ("import sys, sweeps.objective, sweeps.tracking; "
            "print('mlflow' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["False", "False"]


# ---------------------------------------------------------------------------- encoding
def test_run_length_sends_first_and_last_step_of_each_run() -> None:
    series, out = RunLength("lr"), []
    for step, value in enumerate([1.0, 1.0, 1.0, 0.5, 0.5, math.nan, math.nan, 0.5]):
        series.push(step, value, 0, out)
    series.close(0, out)
    got = [(p[3], p[1]) for p in out]
    assert got[:5] == [(0, 1.0), (2, 1.0), (3, 0.5), (4, 0.5), (5, got[4][1])]
    assert math.isnan(got[4][1]) and got[4][0] == 5 and got[5][0] == 6
    assert got[6:] == [(7, 0.5)]
    assert len(got) == 7


def test_encoder_cadence_nonfinite_and_keys() -> None:
    records, _ = synthetic(25, nan_at=13, lr_change_at=7)
    encoder = TraceEncoder(layer_every=10)
    points = encoder.encode(records[:20], ts=1) + encoder.encode(records[20:], ts=2)
    points += encoder.close(ts=3)
    by_key: dict[str, list[tuple[int, float]]] = {}
    for key, value, _, step in points:
        by_key.setdefault(key, []).append((step, value))
    assert [s for s, _ in by_key["grad_norm/global"]] == list(range(25))
    assert [s for s, _ in by_key["loss"]] == list(range(25))
    # Per-layer, log10: every 10th step, every non-finite step (13..24), and the last step;
    # a NaN/inf/0 value has no log10 point (net.4 is NaN from step 13).
    assert [s for s, _ in by_key["grad_norm_log10/net.2"]] == [0, 10, *range(13, 25)]
    assert [s for s, _ in by_key["grad_norm_log10/net.4"]] == [0, 10]
    assert by_key["grad_norm_log10/net.2"][0][1] == pytest.approx(math.log10(0.2))
    assert [s for s, _ in by_key["grad_norm/global_log10"]] == list(range(13))
    assert by_key["lr"] == [(0, 0.1), (6, 0.1), (7, 0.05), (24, 0.05)]
    assert by_key["guard/nonfinite_grads"] == [(0, 0.0), (12, 0.0), (13, 1.0), (24, 1.0)]
    assert by_key["guard/amp_overflow_count"] == [(0, 0.0), (24, 0.0)]
    assert encoder.first_nonfinite == 13
    assert metric_key("grad_norm/enc.layers[0]") == "grad_norm/enc.layers_0_"


# ---------------------------------------------------------------------------- a sweep
def test_sweep_flow_runs_traces_tags_artifacts(study: StudyTracker, tmp_path: Path) -> None:
    client = client_for(study.sink.uri)
    outcomes = []
    for number, config in enumerate((STABLE, EXPLODES, CLIPPED)):
        run_id = study.create_trial_run(number, config)
        outcomes.append(run_trial(task(study.settings.for_run(run_id), number, config)))
        assert outcomes[-1].mlflow_run_id == run_id
    assert [o.outcome for o in outcomes] == ["complete", "exploded", "complete"]
    report = study.finish_study({}, {"n_trials": 3, "best_trial": 0, "note": "ok"})
    assert report.pending == 0

    experiment = client.get_experiment(study.experiment_id)
    assert experiment.name == "tiny"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([study.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.parent_run_id]
    assert len(runs) == 4 and len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.run_name == "tiny" and parent.info.status == "FINISHED"
    assert parent.data.params["workload.args.depth"] == "4"
    assert parent.data.params["space.lr.log"] == "true"
    assert parent.data.metrics["n_trials"] == 3.0
    assert parent.data.tags["stabsweep.summary.note"] == "ok"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["spec.yaml"]

    best = parent.data.tags["stabsweep.best_trial_run_id"]
    assert best in (outcomes[0].mlflow_run_id, outcomes[2].mlflow_run_id)
    assert f"runs/{best})" in parent.data.tags["mlflow.note.content"]  # a link to it
    for number, outcome in enumerate(outcomes):
        run = client.get_run(outcome.mlflow_run_id)
        name = f"trial-{number}"
        if outcome.outcome == "exploded":  # told apart in the runs table: name, status, dot
            name += f" [exploded @{outcome.verdict['step']}]"
        assert run.info.run_name == name + (" [best]" if run.info.run_id == best else "")
        assert run.info.status == ("KILLED" if outcome.outcome == "exploded" else "FINISHED")
        assert run.data.tags["mlflow.runColor"] == (
            "#e03131" if outcome.outcome == "exploded" else "#2f9e44")
        assert run.data.tags["stabsweep.state"] == outcome.outcome
        steps = outcome.steps_run
        grad = history(client, run.info.run_id, "grad_norm/global")
        assert [s for s, _ in grad] == list(range(steps))
        assert len(history(client, run.info.run_id, "loss")) == steps
        assert run.data.metrics["steps_run"] == steps
        folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / f"a{number}")))
        plots = ["grad_norm_trace.png", "layer_heatmap.png"] if number == 1 else []
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["diagnosis.json", "trace.parquet", *plots])  # plots: exploded trials (default)
        trace = pd.read_parquet(folder / "trace.parquet")
        assert len(trace) == steps
        np.testing.assert_allclose([v for _, v in grad], as_stored(trace["grad_norm"]),
                                   rtol=1e-12)
        for plot in plots:
            assert (folder / plot).read_bytes()[:4] == b"\x89PNG"
        diag = json.loads((folder / "diagnosis.json").read_text())
        assert diag["outcome"] == outcome.outcome
        assert run.data.params["lr"] == str(json.loads(json.dumps(
            [STABLE, EXPLODES, CLIPPED][number]["lr"])))
        evals = history(client, run.info.run_id, "eval_loss")
        assert evals[-1][0] == steps

    stable, boom, clipped = (client.get_run(o.mlflow_run_id) for o in outcomes)
    assert stable.data.tags["stabsweep.exploded"] == "false"
    layer_keys = sorted(k for k in stable.data.metrics if k.startswith("grad_norm_log10/"))
    assert layer_keys == ["grad_norm_log10/00:Linear", "grad_norm_log10/02:Linear",
                          "grad_norm_log10/04:Linear", "grad_norm_log10/06:Linear"]
    every = auto_layer_every(4)  # default cadence: max(25, layers)
    assert every == 25
    assert [s for s, _ in history(client, stable.info.run_id, layer_keys[0])] == [0, 25, 39]
    assert history(client, stable.info.run_id, "lr") == [(0, 1e-3), (39, 1e-3)]
    coef = history(client, clipped.info.run_id, "guard/clip_coef")
    assert len(coef) >= 2 and min(v for _, v in coef) < 1.0  # clipping active: coef < 1
    # The explosion: tagged, found by a filter, diagnosed.
    tags = boom.data.tags
    assert tags["stabsweep.exploded"] == "true"
    assert tags["stabsweep.verdict_kind"] == outcomes[1].verdict["kind"]
    assert tags["stabsweep.onset_step"] == str(outcomes[1].diagnosis["onset_step"])
    assert tags["stabsweep.first_layer"] == outcomes[1].diagnosis["first_layer"]
    assert tags["stabsweep.first_layer"].endswith(":Linear")
    assert "first layer to rise" in tags["mlflow.note.content"]
    assert tags["stabsweep.reason"].startswith("exploded:")
    found = client.search_runs([study.experiment_id], "tags.`stabsweep.exploded` = 'true'")
    assert [r.info.run_id for r in found] == [boom.info.run_id]
    assert outcomes[1].steps_run < 40


def test_resume_reuses_parent_and_closes_lost_trials(study: StudyTracker,
                                                     tmp_path: Path) -> None:
    client = client_for(study.sink.uri)
    lost = study.create_trial_run(0, STABLE)
    study.close_trial_run(lost, keys.WORKER_LOST, "worker died (node lost)")
    study.close(status="KILLED")  # Ctrl-C
    again = StudyTracker.open("tiny", SPEC, study.sink.uri, study.parent_run_id,
                              spool_dir=tmp_path / "spool")
    assert again.resumed and again.parent_run_id == study.parent_run_id
    assert client.get_run(again.parent_run_id).info.status == "RUNNING"
    retry = again.create_trial_run(0, STABLE, attempt=2)
    stopped = again.create_trial_run(1, STABLE)
    again.close_trial_run(stopped, keys.INTERRUPTED, "driver interrupted")
    run = client.get_run(lost)
    assert run.info.status == "FAILED"
    assert run.data.tags["stabsweep.state"] == "worker_lost"
    assert run.data.tags["stabsweep.exploded"] == "false"
    assert run.data.tags["stabsweep.reason"] == "worker died (node lost)"
    assert client.get_run(stopped).info.status == "KILLED"
    assert client.get_run(retry).info.run_name == "trial-0-retry1"
    assert client.get_run(retry).data.tags["stabsweep.attempt"] == "2"
    assert len([r for r in client.search_runs([study.experiment_id])
                if "mlflow.parentRunId" not in r.data.tags]) == 1
    # A parent run that is gone: a new one, with a warning.
    client.delete_run(again.parent_run_id)
    with pytest.warns(RuntimeWarning, match="is gone"):
        third = StudyTracker.open("tiny", SPEC, study.sink.uri, again.parent_run_id,
                                  spool_dir=tmp_path / "spool")
    assert third.parent_run_id != again.parent_run_id and not third.resumed


def test_ui_url_hides_credentials(study: StudyTracker) -> None:
    assert "stabsweep ui" in study.ui_url()
    study.sink.uri = "https://user:secret@mlflow.example:8443/prefix"
    assert study.ui_url() == ("https://mlflow.example:8443/prefix/#/experiments/"
                              f"{study.experiment_id}/runs?workflowType=machine_learning"
                              "&viewStateShareKey=stabsweep")


def test_experiment_carries_the_view_the_url_opens(study: StudyTracker) -> None:
    from sweeps.tracking import study_urls

    experiment = client_for(study.sink.uri).get_experiment(study.experiment_id)
    state = json.loads(experiment.tags["mlflow.sharedViewState.stabsweep"])
    assert state["searchFilter"] == "tags.`stabsweep.study` = 'tiny'"  # flat: trials shown
    assert state["orderByKey"] == "metrics.`eval_loss`" and state["orderByAsc"] is True
    assert state["runsHiddenMode"] == "SHOW_ALL"  # charts draw every trial, not 10
    assert "tags.`stabsweep.state`" in state["selectedColumns"]
    assert "params.`lr`" in state["selectedColumns"]
    assert study_urls(study.sink.uri, "http://127.0.0.1:5000") == [
        ("tiny", f"http://127.0.0.1:5000/#/experiments/{study.experiment_id}/runs"
                 "?workflowType=machine_learning&viewStateShareKey=stabsweep")]


def test_nonfinite_values_are_kept_and_tagged(study: StudyTracker) -> None:
    client = client_for(study.sink.uri)
    records, trace = synthetic(300, nan_at=250, inf_at=120)
    run_id = study.create_trial_run(0, STABLE)
    tracker = TrialTracker(settings_for(study, run_id), trial_number=0)
    for i in range(0, 300, 3):
        tracker.on_sync(records[i:i + 3])
    verdict = Verdict("nonfinite", 250, math.nan, 0.0, layer="net.4")
    outcome = TrialOutcome(0, keys.EXPLODED, 1e12, f"exploded: {verdict}", steps_run=300)
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
    costs on_sync nothing; every point lands when the trial's spool is uploaded."""
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
    start = time.perf_counter()
    for record in records:
        tracker.on_sync([record])
    assert not calls  # nothing was sent from the training thread
    assert time.perf_counter() - start < 2.0 and tracker.stats.write_s < 2.0
    tracker.finish(fake_result(trace), TrialOutcome(0, keys.COMPLETE, 0.5, "ok",
                                                    steps_run=400))
    assert calls and tracker.stats.blocked == 0
    assert [s for s, _ in history(client, run_id, "grad_norm/global")] == list(range(400))
    assert tracker.stats.values_lost == 0


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
                   TrialOutcome(0, keys.EXPLODED, 1e12, f"exploded: {verdict}", steps_run=120))
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


# ---------------------------------------------------------------------------- store down
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
    outcome = TrialOutcome(1, keys.EXPLODED, 1e12, f"exploded: {verdict}", steps_run=120)
    assert tracker.finish(fake_result(trace, verdict), outcome) == placeholder
    study.close_trial_run(first, keys.WORKER_LOST, "lost while the server was down")
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


# ---------------------------------------------------------------------------- concurrency
def _writer(uri: str, settings: TrackingSettings, number: int, steps: int) -> dict[str, Any]:
    records, trace = synthetic(steps)
    tracker = TrialTracker(settings, trial_number=number, send_interval=0.05)
    for i in range(0, steps, 4):
        tracker.on_sync(records[i:i + 4])
    tracker.finish(fake_result(trace), TrialOutcome(number, keys.COMPLETE, 0.5, "ok",
                                                    steps_run=steps))
    stats = tracker.stats.sink
    return {"rejected": stats.rejected, "spooled": stats.ops_spooled, "errors": stats.errors,
            "lock_retries": stats.lock_retries, "points": tracker.stats.points}


def test_concurrent_writers_on_one_sqlite_store(study: StudyTracker) -> None:
    steps, n = 2000, 3
    runs = [study.create_trial_run(i, STABLE) for i in range(n)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(n) as pool:
        results = pool.starmap(_writer, [(study.sink.uri, settings_for(study, run, 1), i, steps)
                                         for i, run in enumerate(runs)])
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


def test_stabsweep_ui_prints_the_study_url(study: StudyTracker,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from sweeps import cli

    console = Console(record=True, width=400)
    monkeypatch.setattr(cli, "console", console)
    cli._print_study_urls(study.sink.uri, "http://127.0.0.1:5000")
    text = console.export_text()
    assert f"tiny: {study.ui_url('http://127.0.0.1:5000')}" in text
    assert "viewStateShareKey=stabsweep" in text and "workflowType=machine_learning" in text
