"""The MLflow UI shows a sweep the way we say it does (real server, headless Chromium).

A study with three trials (two stable, one that explodes) is logged through sweeps.tracking
to a real ``mlflow server``; Chromium opens exactly the URL that is printed (``stabsweep
run``'s summary: ``StudyTracker.ui_url()``; ``stabsweep ui``: the same) and the test asserts
on the rendered DOM: every trial listed without unfolding anything, the exploded one told
apart by its name, the exploded trial's charts (grad-norm section first, global norm first,
data drawn), its tags, and the study's report rendered with its figures. Screenshots go to
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
from sweeps.common import Outcome
from sweeps.tracking import StudyTracker, TrialTracker
from sweeps.worker import TrialOutcome

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
LAYERS = ("00:Linear", "02:Linear", "04:Linear")


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
    verdict = Verdict("nonfinite", nan_at, math.nan, 0.0, layer="04:Linear") if nan_at else None
    steps = nan_at + 1 if nan_at else STEPS
    result = SimpleNamespace(trace=trace, verdict=verdict, diagnosis=diagnose(trace, verdict),
                             evals=[] if nan_at else [{"eval_loss": 0.3 + number / 10,
                                                       "step": float(steps)}],
                             final_eval={"eval_loss": 0.3 + number / 10}, steps_run=steps,
                             wall_time_s=1.0)
    outcome = (TrialOutcome(number, Outcome.EXPLODED, 1e12, f"exploded: {verdict}",
                            steps_run=steps)
               if verdict else TrialOutcome(number, Outcome.COMPLETE, 0.3, "ok", steps_run=steps))
    return tracker.finish(result, outcome)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("ui")
    cwd = os.getcwd()
    os.chdir(folder)
    os.environ["STABSWEEP_UPLOADER_IDLE_S"] = "10"
    server: TrackingServer = start_server(workdir=folder / "server", timeout=120)
    try:
        spec = {"study": STUDY, "steps": STEPS, "space": {"lr": {}, "clip_method": {}},
                "objective": {"metric": "eval_loss", "direction": "minimize"}}
        study = StudyTracker.open(STUDY, spec, server.url, spool_dir=folder / "spool")
        runs = [log_trial(study, 0, None), log_trial(study, 1, 150), log_trial(study, 2, None)]
        report = _report(folder / "report")
        study.finish_study({"report.html": report}, {"n_trials": 3, "n_exploded": 1})
        yield {"server": server, "study": study, "trials": runs}
    finally:
        server.stop()
        os.chdir(cwd)


def _report(folder: Path) -> Path:
    """A report.html like write_report's: Markdown with a figure, rendered standalone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sweeps.results._html import markdown_to_html

    folder.mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2], [3, 1, 2])
    fig.savefig(folder / "history.png")
    plt.close(fig)
    page = markdown_to_html("# Study `ui-study`\n\n## Figures\n\n"
                            "![Optimisation history](history.png)\n", folder)
    (folder / "report.html").write_text(page)
    return folder / "report.html"


def printed_url(logged: dict[str, Any]) -> str:
    """The URL a user is given: ``stabsweep run`` prints ``ui_url()``; ``stabsweep ui``
    prints one per study (checked to be the same here)."""
    from rich.console import Console

    from sweeps.cli._servers import print_study_urls

    url = logged["study"].ui_url()
    console = Console(record=True, width=400)
    print_study_urls(logged["server"].url, logged["server"].url, console)
    assert f"{STUDY}: {url}" in console.export_text()
    return url


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


def test_printed_url_lists_every_trial_and_marks_the_exploded_one(
        logged: dict[str, Any], page: Any) -> None:
    study = logged["study"]
    url = printed_url(logged)
    assert url == (f"{logged['server'].url}/#/experiments/{study.experiment_id}/runs"
                   "?workflowType=machine_learning&viewStateShareKey=stabsweep")
    page.goto(url)
    # No row to unfold: the study's trials are all listed (the view's search filter turns
    # MLflow's nesting off), best objective first.
    names = {}
    for run_id in logged["trials"]:
        link = page.locator(f"[role='row'] a[href$='/runs/{run_id}']")
        link.wait_for()
        names[run_id] = link.inner_text().strip()
    assert names[logged["trials"][0]] == "trial-0 [best]"
    assert names[logged["trials"][1]] == "trial-1 [exploded @150]"  # told apart at a glance
    assert names[logged["trials"][2]] == "trial-2"
    page.locator(f"[role='row'] a[href$='/runs/{study.parent_run_id}']").wait_for()
    assert page.get_by_text("4 matching runs").is_visible()
    assert page.get_by_text("Model training").first.is_visible()
    header = page.locator(".ag-header").inner_text()
    assert "stabsweep.state" in header and "eval_loss" in header  # useful default columns
    rows = page.locator("[role='row']:has(a[href*='/runs/'])").all_inner_texts()
    order = [next(i for i, r in enumerate(rows) if name in r) for name in
             ("trial-0 [best]", "trial-2", "trial-1 [exploded @150]")]
    assert order == sorted(order)  # sorted by eval_loss, the exploded trial has none: last
    page.screenshot(path=str(OUT / "runs.png"))


def test_exploded_trial_charts_grad_norm_first_with_data(logged: dict[str, Any],
                                                         page: Any) -> None:
    study, run_id = logged["study"], logged["trials"][1]
    base = logged["server"].url
    page.goto(f"{base}/#/experiments/{study.experiment_id}/runs/{run_id}/model-metrics"
              "?workflowType=machine_learning")
    # The run ended on NaN: MLflow 3.17 draws no chart for a metric whose last value is NaN
    # (grad_norm/global), so the log10 series, which skips non-finite values, is the first.
    page.get_by_text("trial-1 [exploded @150] (grad_norm/global_log10)", exact=True).wait_for()
    for layer in LAYERS:
        page.get_by_text(f"trial-1 [exploded @150] (grad_norm_log10/{layer})",
                         exact=True).wait_for()
    lines = [t.strip() for t in page.inner_text("main").splitlines() if t.strip()]
    lines = lines[lines.index("Auto-refresh"):]  # the charts, below the tabs
    sections = [t for t in lines if t in ("grad_norm", "grad_norm_log10", "guard",
                                          "Model metrics")]
    assert sections == ["grad_norm", "grad_norm_log10", "guard", "Model metrics"]
    charts = [t for t in lines if t in ("global", "global_log10", *LAYERS)]
    assert charts[0] in ("global", "global_log10")  # the global norm first ...
    assert [c for c in charts if c in LAYERS] == list(LAYERS)  # ... then layers, model order
    chart = page.locator(".js-plotly-plot:has(.scatterlayer path.js-line)").first
    chart.wait_for()
    line = chart.locator(".scatterlayer path.js-line").first.get_attribute("d") or ""
    assert line.count("L") >= 20  # the global norm up to the explosion, drawn
    page.screenshot(path=str(OUT / "trial-1-exploded-charts.png"))


def test_exploded_trial_overview_says_what_blew_up(logged: dict[str, Any], page: Any) -> None:
    study, run_id = logged["study"], logged["trials"][1]
    base = logged["server"].url
    page.goto(f"{base}/#/experiments/{study.experiment_id}/runs/{run_id}"
              "?workflowType=machine_learning")
    page.get_by_text("stabsweep.exploded", exact=True).wait_for()
    page.locator(f"a[href$='/runs/{study.parent_run_id}']").first.wait_for()  # "Parent run"
    body = page.inner_text("body")
    assert "stabsweep.nonfinite_step" in body and "stabsweep.verdict_kind" in body
    assert "stabsweep.first_layer" in body
    assert "first layer to rise" in body  # the run's description
    assert "Killed" in body
    page.screenshot(path=str(OUT / "trial-1-overview.png"), full_page=True)


def test_study_run_links_best_trial_and_renders_its_report(logged: dict[str, Any],
                                                           page: Any) -> None:
    study = logged["study"]
    base = logged["server"].url
    page.goto(f"{base}/#/experiments/{study.experiment_id}/runs/{study.parent_run_id}"
              "?workflowType=machine_learning")
    link = page.locator(f"a[href$='/runs/{logged['trials'][0]}']").first  # best trial
    link.wait_for()
    page.goto(f"{base}/#/experiments/{study.experiment_id}/runs/{study.parent_run_id}"
              "/artifacts/report/report.html?workflowType=machine_learning")
    frame = page.frame_locator("iframe").first
    image = frame.locator("img[alt='Optimisation history']")
    image.wait_for()
    assert image.evaluate("img => img.complete && img.naturalWidth > 0")
    page.screenshot(path=str(OUT / "study-report.png"))
