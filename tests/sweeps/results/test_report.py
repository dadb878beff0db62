"""Report and status of a study built in memory with the attributes the sweep driver stores
(tests/sweeps/results/demo_study.py; its trials table, rates and savings: test_trials.py)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from sweeps.common import keys
from sweeps.results import render_status, study_status, trials_frame, write_report
from sweeps.results._plots import map_frame
from tests.sweeps.results.demo_study import TRIALS, make_study, params_of, spec

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ------------------------------------------------------------------ status
def test_study_status_counts_best_and_json() -> None:
    status = study_status(make_study())
    json.dumps(status, allow_nan=False)
    assert status["study"] == "demo" and status["direction"] == "minimize"
    assert status["metric"] == "eval_loss" and status["n_trials"] == 9
    assert status["counts"]["outcome"] == {"complete": 4, "exploded": 3, "slow": 1, "failed": 1}
    assert status["counts"]["state"] == {"COMPLETE": 4, "PRUNED": 4, "FAIL": 1}
    assert status["best"] == {"number": 1, "value": 0.30, "params": params_of(3e-3, 1.0, 1)}
    assert status["savings"]["steps_saved"] == 440  # the failed trial saved nothing
    third = status["trials"][3]
    assert third["outcome"] == "exploded" and third["why"] == "exploded: nonfinite"
    assert third["value"] is None and third["steps_run"] == 120
    assert status["trials"][1]["value"] == 0.30


def test_render_status_prints_the_table() -> None:
    from rich.console import Console

    console = Console(record=True, width=200)
    render_status(study_status(make_study()), console)
    text = console.export_text()
    assert "demo: 9 trials (4 complete, 3 exploded, 1 slow, 1 failed)" in text
    assert "best stable trial #1: eval_loss = 0.3" in text
    assert "steps run: 1170 of 1610 (27% saved by pruning)" in text
    assert "RuntimeError: boom" in text and "exploded: spike" in text


# ------------------------------------------------------------------ report
def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_write_report_files_and_content(tmp_path: Path) -> None:
    paths = write_report(make_study(), tmp_path / "out")
    for path in (paths.history, paths.stability_map, paths.importances):
        assert path is not None and _is_png(path)
    assert pd.read_csv(paths.trials_csv)["number"].tolist() == list(range(9))
    text = paths.report_md.read_text()
    assert "Trial 1: `eval_loss` = 0.3 (complete, no explosion)." in text
    assert "- trial 3: onset step 95, first layer `layers.11`, verdict `nonfinite`; " \
           "suggested fix: clip the global norm at 2.0" in text
    assert "- trial 4: onset step 40, first layer `layers.0`, verdict `spike`" in text
    assert "Most common first layers: `layers.11` (2), `layers.0` (1)." in text
    assert "Most common verdict kinds: `nonfinite` (2), `spike` (1)." in text
    assert "| [0.152, 0.8] | 4 | 3 | 0.75 |" in text
    assert "Steps run: 1170 of 1610" in text and "(27.3% saved)" in text
    assert "| exploded | 3 |" in text
    assert "![Stability map](stability_map.png)" in text
    assert "## Parameter importances" in text and "fANOVA" in text


def test_stability_map_axes_and_no_clip_band() -> None:
    study = make_study()
    data = map_frame(trials_frame(study), study, spec())
    assert not isinstance(data, str)
    assert (data.x, data.y, data.note) == ("lr", "clip_threshold", "")
    frame = data.frame
    assert len(frame) == 8 and frame["exploded"].sum() == 3
    assert frame["clip_threshold"].isna().sum() == 4  # clip_method none: the "no clip" band
    assert sorted(frame["clip_threshold"].dropna()) == [0.5, 1.0, 2.0, 5.0]


def test_stability_map_without_lr_uses_first_two_floats() -> None:
    study = optuna.create_study()
    dists = {"agc_clip_factor": FloatDistribution(1e-3, 0.1, log=True),
             "init_std": FloatDistribution(0.01, 0.1), "beta1": FloatDistribution(0.0, 0.99)}
    for i, (a, s) in enumerate([(0.01, 0.02), (0.05, 0.08), (0.002, 0.05)]):
        study.add_trial(create_trial(
            value=float(i), params={"agc_clip_factor": a, "init_std": s, "beta1": 0.5},
            distributions=dists))
    data = map_frame(trials_frame(study), study, None)
    assert not isinstance(data, str)
    assert (data.x, data.y) == ("agc_clip_factor", "init_std")
    assert data.frame["init_std"].tolist() == [0.02, 0.08, 0.05]


def test_report_of_a_study_with_nothing_to_show(tmp_path: Path) -> None:
    paths = write_report(optuna.create_study(study_name="empty"), tmp_path)
    assert paths.history is None and paths.stability_map is None and paths.importances is None
    text = paths.report_md.read_text()
    assert "No completed trial without an explosion." in text
    assert "parameter importances skipped: they need >= 2 complete trials; the study has 0" \
        in text
    assert "no stability map: the space has no float param with a positive range" in text
    assert "no history plot: the study has no trials" in text


def test_report_skips_importances_with_one_complete_trial(tmp_path: Path) -> None:
    study = make_study(TRIALS[:1] + TRIALS[3:6], with_spec=False)
    paths = write_report(study, tmp_path)
    assert paths.importances is None and paths.history is not None
    assert paths.stability_map is not None  # lr and clip_method come from the trials
    notes = "\n".join(paths.notes)
    assert "need >= 2 complete trials; the study has 1" in notes
    assert f"no valid {keys.STUDY_SPEC} attribute" in notes


def test_report_html_renders_its_figures_inline(tmp_path: Path) -> None:
    """MLflow's artifact viewer shows report.md's image links as text; report.html carries
    its figures as data URIs, so it renders, figures included, anywhere."""
    paths = write_report(make_study(), tmp_path / "out")
    assert paths.report_html == tmp_path / "out" / "report.html"
    page = paths.report_html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    figures = [p for p in (paths.history, paths.stability_map, paths.importances) if p]
    assert page.count('src="data:image/png;base64,') == len(figures) >= 2
    assert "![" not in page and "](history.png)" not in page
    assert "<table>" in page and "<h2>Summary</h2>" in page


def test_status_counts_skipped_updates() -> None:
    """Issue 22 item 6: status and status --json said "completed 200 steps" and nothing of the
    update the guard dropped at step 194. From the trial's attribute, or its diagnosis."""
    from rich.console import Console

    trials = [(*TRIALS[0][:6], {keys.SKIPPED: 1}),
              (*TRIALS[1][:6], {keys.DIAGNOSIS: {"skipped_count": 2}}), *TRIALS[2:]]
    status = study_status(make_study(trials))
    json.dumps(status, allow_nan=False)
    assert [t["skipped_updates"] for t in status["trials"][:3]] == [1, 2, None]
    console = Console(record=True, width=200)
    render_status(status, console)
    text = console.export_text()
    assert "200, 1 skipped" in text and "200, 2 skipped" in text
