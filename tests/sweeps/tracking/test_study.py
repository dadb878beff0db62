"""sweeps.tracking._study: a study's parent run, its trials' child runs (traces, tags, artifacts)
and resuming a study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweeps.common import Outcome
from sweeps.tracking import StudyTracker, auto_layer_every
from sweeps.worker import run_trial
from tests.sweeps.tracking.helpers import (
    CLIPPED,
    EXPLODES,
    SPEC,
    STABLE,
    as_stored,
    client_for,
    history,
    task,
)


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
        # the diagnosis's own word (healthy, rescued, never_learned, exploded) is richer
        assert (diag["outcome"] == "exploded") == (outcome.outcome == "exploded")
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
    study.close_trial_run(lost, Outcome.WORKER_LOST, "worker died (node lost)")
    study.close(status="KILLED")  # Ctrl-C
    again = StudyTracker.open("tiny", SPEC, study.sink.uri, study.parent_run_id,
                              spool_dir=tmp_path / "spool")
    assert again.resumed and again.parent_run_id == study.parent_run_id
    assert client.get_run(again.parent_run_id).info.status == "RUNNING"
    retry = again.create_trial_run(0, STABLE, attempt=2)
    stopped = again.create_trial_run(1, STABLE)
    again.close_trial_run(stopped, Outcome.INTERRUPTED, "driver interrupted")
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


def test_reconcile_makes_the_runs_say_what_the_study_says(study: StudyTracker) -> None:
    """Issue 22 item 2: after Ctrl-C a worker that trained on ended its run "complete", 200
    steps, while the study recorded it interrupted at 90. reconcile rewrites what differs."""
    client = client_for(study.sink.uri)
    stopped = study.create_trial_run(0, STABLE)
    agreed = study.create_trial_run(1, STABLE)
    for run_id in (stopped, agreed):  # what a worker that ran to the end writes
        study.sink.submit({"op": "log_batch", "run": run_id, "tags": [
            ["stabsweep.state", "complete"], ["stabsweep.steps_run", "200"]]})
        study.sink.submit({"op": "status", "run": run_id, "status": "FINISHED"})
    expected = {stopped: (Outcome.INTERRUPTED, 90, "interrupted (Ctrl-C); retried on resume"),
                agreed: (Outcome.COMPLETE, 200, "completed 200 steps")}
    assert study.reconcile(expected) == 1
    run = client.get_run(stopped)
    assert run.info.status == "KILLED"
    assert run.data.tags["stabsweep.state"] == "interrupted"
    assert run.data.tags["stabsweep.steps_run"] == "90"
    assert run.data.tags["stabsweep.reason"] == "interrupted (Ctrl-C); retried on resume"
    assert client.get_run(agreed).info.status == "FINISHED"
    assert study.reconcile(expected) == 0  # nothing left to correct


def test_a_closed_trial_run_records_its_steps(study: StudyTracker) -> None:
    client = client_for(study.sink.uri)
    lost = study.create_trial_run(0, STABLE)
    study.close_trial_run(lost, Outcome.WORKER_LOST, "worker died", steps=37)
    assert client.get_run(lost).data.tags["stabsweep.steps_run"] == "37"


def test_an_orphaned_study_run_ends_killed(study: StudyTracker) -> None:
    """The command the driver's watchdog runs when the driver is killed -9."""
    import subprocess

    client = client_for(study.sink.uri)
    assert client.get_run(study.parent_run_id).info.status == "RUNNING"
    subprocess.run(study.orphan_command(), check=True, timeout=120)
    run = client.get_run(study.parent_run_id)
    assert run.info.status == "KILLED"
    assert "driver stopped" in run.data.tags["stabsweep.reason"]


def test_reconcile_ends_a_run_no_trial_records(study: StudyTracker) -> None:
    """Ctrl-C between creating a trial's run and recording its id on the trial left the run
    RUNNING (seen in the fault matrix): a run of the study that no trial records and no live
    trial runs is ended, interrupted; a live one (another driver's) is left alone."""
    client = client_for(study.sink.uri)
    orphan = study.create_trial_run(6, STABLE)
    live = study.create_trial_run(7, STABLE)
    assert study.reconcile({}) == 0  # without live: orphans are not looked for
    assert study.reconcile({}, live=[live]) == 1
    run = client.get_run(orphan)
    assert run.info.status == "KILLED" and run.data.tags["stabsweep.state"] == "interrupted"
    assert "stopped while it started this trial" in run.data.tags["stabsweep.reason"]
    assert client.get_run(live).info.status == "RUNNING"
