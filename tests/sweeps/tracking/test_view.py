"""sweeps.tracking._view: the experiment's shared view and the URLs that open it (no
credentials shown), as the study tracker and `stabsweep ui` print them."""

from __future__ import annotations

import json

from sweeps.tracking import StudyTracker
from tests.sweeps.tracking.helpers import client_for


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


def test_stabsweep_ui_prints_the_study_url(study: StudyTracker) -> None:
    from rich.console import Console

    from sweeps.cli._servers import print_study_urls

    console = Console(record=True, width=400)
    print_study_urls(study.sink.uri, "http://127.0.0.1:5000", console)
    text = console.export_text()
    assert f"tiny: {study.ui_url('http://127.0.0.1:5000')}" in text
    assert "viewStateShareKey=stabsweep" in text and "workflowType=machine_learning" in text
