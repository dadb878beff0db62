"""Retake the README's MLflow screenshots from a real sweep (headless Chromium).

    make demo                          # or: stabsweep run examples/quick.yaml --workers 2
    stabsweep ui --port 5088 &         # prints the study's URL
    .venv/bin/python mlflow_setup/screenshots/take.py http://127.0.0.1:5088 quick

Opens exactly the URL ``stabsweep ui`` prints for the study (its runs, Model training mode),
then the exploded trial with the most steps, and writes ``sweep-runs.png`` and
``exploded-trial-grad-norms.png`` next to this file. Needs Debian's chromium and playwright.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(base_url: str, study: str) -> None:
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(HERE.parents[1]))
    from sweeps.tracking import study_urls

    url = dict(study_urls(base_url, base_url))[study]
    client = MlflowClient(base_url)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise SystemExit(f"no experiment {study!r} in {base_url}")
    exploded = client.search_runs([experiment.experiment_id],
                                  "tags.`stabsweep.exploded` = 'true'")
    run = max(exploded, key=lambda r: int(r.data.tags.get("stabsweep.onset_step", 0)))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(), executable_path="/usr/bin/chromium", args=ARGS,
            viewport={"width": 1500, "height": 900}, headless=True)
        page = browser.new_page()
        page.set_default_timeout(90_000)
        page.goto(url)
        page.locator(f"[role='row'] a[href$='/runs/{run.info.run_id}']").wait_for()
        _close_assistant(page)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(HERE / "sweep-runs.png"))
        page.goto(f"{base_url}/#/experiments/{experiment.experiment_id}/runs/"
                  f"{run.info.run_id}/model-metrics?workflowType=machine_learning")
        page.get_by_text("grad_norm_log10", exact=True).first.wait_for()
        page.locator(".js-plotly-plot .scatterlayer path.js-line").first.wait_for()
        _close_assistant(page)
        page.wait_for_timeout(2500)
        page.screenshot(path=str(HERE / "exploded-trial-grad-norms.png"))
        browser.close()
    print(f"opened {url}; exploded trial {run.info.run_name}; screenshots in {HERE}")


def _close_assistant(page: object) -> None:
    """Fold the 'MLflow Assistant' side panel away (it takes a third of the width)."""
    button = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):  # no panel in this MLflow version: nothing to fold
        button.click(timeout=5000)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "quick")
