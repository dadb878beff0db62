"""The MLflow UI shows a sweep the way we say it does (real server, headless Chromium).

A study with two trials (one stable, one that explodes) is logged through sweeps.tracking to a
real ``mlflow server``; Chromium opens the URL ``StudyTracker.ui_url()`` prints and the test
asserts on the rendered DOM: the trial runs nested under the study run, the
``grad_norm/global`` chart of a trial, the explosion tags. Screenshots go to
``test-output/mlflow-ui/`` (git-ignored) for a person to look at.

Needs Debian's chromium (``apt-get install -y chromium``) and the ``playwright`` Python package
(dev extra); Playwright's own browser download is not used.
"""

from __future__ import annotations

import math
import os
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
from sweeps import keys
from sweeps.objective import TrialOutcome
from sweeps.tracking import StudyTracker, TrialTracker

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "test-output" / "mlflow-ui"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
TIMEOUT_MS = 90_000  # a loaded CI machine renders slowly; we wait for elements, never sleep
STUDY = "ui-study"
STEPS = 200
LAYERS = ("net.0", "net.2", "net.4")


def trial_data(seed: int, nan_at: int | None) -> tuple[list[StepRecord], pd.DataFrame]:
    """A noisy, slowly rising grad-norm trace; NaN from ``nan_at`` on (an explosion)."""
    rng = np.random.default_rng(seed)
    records, rows = [], []
    for step in range(STEPS):
        norms = np.array([0.1, 0.2, 0.3]) * (1 + step / 50) * np.exp(rng.normal(0, 0.1, 3))
        loss, nonfinite = 2.0 / (1 + step / 20), 0
        if nan_at is not None and step >= nan_at - 10:
            norms = norms * 3.0 ** (step - nan_at + 11)
        if nan_at is not None and step >= nan_at:
            norms, loss, nonfinite = norms * math.nan, math.nan, 3
        norm = float(np.sqrt(np.sum(norms ** 2)))
        records.append(StepRecord(step=step, loss=loss, global_norm=norm, layer_norms=norms,
                                  layer_names=LAYERS, lr=1e-3, nonfinite=nonfinite))
        rows.append({"step": step, "loss": loss, "grad_norm": norm, "lr": 1e-3,
                     "clip_coef": 1.0, "clip_threshold": math.nan, "amp_scale": 1.0,
                     "overflow": False, "nonfinite": nonfinite,
                     **{f"grad_norm/{k}": v for k, v in zip(LAYERS, norms)}})
    return records, pd.DataFrame(rows)


def log_trial(study: StudyTracker, number: int, nan_at: int | None) -> str:
    run_id = study.create_trial_run(number, {"lr": 1e-3 * (number + 1), "clip_method": "none"})
    records, trace = trial_data(number, nan_at)
    tracker = TrialTracker(study.settings.for_run(run_id), trial_number=number)
    for record in records:
        tracker.on_sync([record])
    verdict = Verdict("nonfinite", nan_at, math.nan, 0.0, layer="net.4") if nan_at else None
    steps = nan_at + 1 if nan_at else STEPS
    result = SimpleNamespace(trace=trace, verdict=verdict, diagnosis=diagnose(trace, verdict),
                             evals=[{"eval_loss": 0.3, "step": float(steps)}],
                             final_eval={"eval_loss": 0.3}, steps_run=steps, wall_time_s=1.0)
    outcome = (TrialOutcome(number, keys.EXPLODED, 1e12, f"exploded: {verdict}", steps_run=steps)
               if verdict else TrialOutcome(number, keys.COMPLETE, 0.3, "ok", steps_run=steps))
    return tracker.finish(result, outcome)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("ui")
    cwd = os.getcwd()
    os.chdir(folder)
    server: TrackingServer = start_server(workdir=folder / "server", timeout=120)
    try:
        study = StudyTracker.open(STUDY, {"study": STUDY, "steps": STEPS}, server.url,
                                  spool_dir=folder / "spool")
        runs = [log_trial(study, 0, None), log_trial(study, 1, 150)]
        study.finish_study({}, {"n_trials": 2, "n_exploded": 1})
        yield {"server": server, "study": study, "trials": runs}
    finally:
        server.stop()
        os.chdir(cwd)


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM}: "
                    "apt-get update && apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1600, "height": 1000})
        tab.set_default_timeout(TIMEOUT_MS)
        yield tab
        browser.close()


def test_runs_table_nests_the_trials_under_the_study(logged: dict[str, Any], page: Any) -> None:
    study = logged["study"]
    url = study.ui_url()
    assert url.endswith(f"/#/experiments/{study.experiment_id}/runs?workflowType=machine_learning")
    page.goto(url)
    parent = page.locator(f"[role='row'] a[href$='/runs/{study.parent_run_id}']")
    parent.wait_for()
    assert parent.inner_text() == STUDY
    # Child runs are folded under their parent: unfold the study's row.
    row = page.locator(f"[role='row']:has(a[href$='/runs/{study.parent_run_id}'])")
    row.locator("button[data-component-id*='runnamecellrenderer']").first.click()
    for number, run_id in enumerate(logged["trials"]):
        link = page.locator(f"[role='row'] a[href$='/runs/{run_id}']")
        link.wait_for()
        assert link.inner_text() == f"trial-{number}"
    assert page.get_by_text("3 matching runs").is_visible()
    page.screenshot(path=str(OUT / "runs.png"))


def test_trial_page_charts_grad_norm_global(logged: dict[str, Any], page: Any) -> None:
    study, run_id = logged["study"], logged["trials"][0]
    base = logged["server"].url
    page.goto(f"{base}/#/experiments/{study.experiment_id}/runs/{run_id}/model-metrics"
              "?workflowType=machine_learning")
    page.get_by_placeholder("Search metric charts").fill("grad_norm/global")
    legend = page.get_by_text("trial-0 (grad_norm/global)", exact=True)
    legend.wait_for()
    chart = page.locator(".js-plotly-plot:has(.scatterlayer path.js-line)").first
    chart.wait_for()
    line = chart.locator(".scatterlayer path.js-line").first.get_attribute("d") or ""
    # A 200-step noisy history, drawn: many line segments, not a stub.
    assert line.count("L") >= 20
    ticks = [t.strip().replace("\u2212", "-") for t in
             chart.locator(".xtick text").all_text_contents()]
    assert max(float(t.replace(",", "")) for t in ticks if t) >= 150  # the x axis spans steps
    page.screenshot(path=str(OUT / "trial-0-grad-norm-global.png"))


def test_exploded_trial_shows_its_tags(logged: dict[str, Any], page: Any) -> None:
    study, run_id = logged["study"], logged["trials"][1]
    base = logged["server"].url
    page.goto(f"{base}/#/experiments/{study.experiment_id}/runs/{run_id}"
              "?workflowType=machine_learning")
    page.get_by_text("stabsweep.exploded", exact=True).wait_for()
    page.locator(f"a[href$='/runs/{study.parent_run_id}']").first.wait_for()  # "Parent run"
    body = page.inner_text("body")
    assert "stabsweep.nonfinite_step" in body and "stabsweep.verdict_kind" in body
    assert "trial-1" in body
    page.screenshot(path=str(OUT / "trial-1-overview.png"), full_page=True)
