"""Report and status of a study built in memory with the attributes the sweep driver stores."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sweeps import keys
from sweeps._report_plots import map_frame
from sweeps.report import (
    compute_savings,
    explosion_rate_by_param,
    render_status,
    study_status,
    trials_frame,
    write_report,
)
from sweeps.space import config_from_params
from sweeps.spec import SweepSpec, parse_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPEC = {
    "study": "demo",
    "workload": {"name": "deep_mlp", "args": {"depth": 4, "width": 8}},
    "steps": 200,
    "eval_every": 100,
    "objective": {"metric": "eval_loss", "direction": "minimize"},
    "space": {
        "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        "clip_method": {"type": "categorical", "choices": ["none", "norm"]},
        "clip_threshold": {"type": "float", "low": 0.1, "high": 10.0, "log": True,
                           "when": {"clip_method": ["norm"]}},
        "warmup_steps": {"type": "int", "low": 0, "high": 50, "step": 10},
    },
}
DISTS = {"lr": FloatDistribution(1e-4, 1.0, log=True),
         "clip_method": CategoricalDistribution(["none", "norm"]),
         "clip_threshold": FloatDistribution(0.1, 10.0, log=True),
         "warmup_steps": IntDistribution(0, 50, step=10)}


def diagnosis(onset: int, layer: str, kind: str, fix: str) -> dict[str, Any]:
    return {"exploded": True, "onset_step": onset, "first_layer": layer, "verdict_kind": kind,
            "suggestions": [{"intervention": "clip", "text": fix, "changes": {}},
                            {"intervention": "lr", "text": "second fix", "changes": {}}]}


# number: (state, outcome, lr, clip_threshold or None (no clip), value, steps_run, extra attrs)
TRIALS: list[tuple[TrialState, str, float, float | None, float | None, int, dict[str, Any]]] = [
    (TrialState.COMPLETE, keys.COMPLETE, 1e-3, None, 0.50, 200, {}),
    (TrialState.COMPLETE, keys.COMPLETE, 3e-3, 1.0, 0.30, 200, {}),
    (TrialState.COMPLETE, keys.COMPLETE, 1e-2, 5.0, 0.40, 200, {}),
    (TrialState.PRUNED, keys.EXPLODED, 0.5, None, None, 120, {
        keys.ONSET_STEP: 95, keys.FIRST_LAYER: "layers.11",
        keys.VERDICT: {"kind": "nonfinite", "step": 120},
        keys.DIAGNOSIS: diagnosis(95, "layers.11", "nonfinite", "clip the global norm at 2.0")}),
    (TrialState.PRUNED, keys.EXPLODED, 0.8, 2.0, None, 80, {
        keys.ONSET_STEP: 40, keys.FIRST_LAYER: "layers.0",
        keys.VERDICT: {"kind": "spike", "step": 80},
        keys.DIAGNOSIS: diagnosis(40, "layers.0", "spike", "warm up over 60 steps")}),
    (TrialState.PRUNED, keys.EXPLODED, 0.3, None, None, 60, {
        keys.ONSET_STEP: 31, keys.FIRST_LAYER: "layers.11",
        keys.VERDICT: {"kind": "nonfinite", "step": 60},
        keys.DIAGNOSIS: diagnosis(31, "layers.11", "nonfinite", "lower lr to 0.03")}),
    (TrialState.PRUNED, keys.SLOW, 0.6, 0.5, None, 100, {}),
    (TrialState.FAIL, keys.FAILED, 1e-3, None, None, 10, {
        keys.ERROR: "Traceback (most recent call last):\n  ...\nRuntimeError: boom"}),
    (TrialState.COMPLETE, keys.COMPLETE, 2e-4, None, 0.80, 200, {keys.ATTEMPT: 2,
                                                                 keys.RETRY_OF: 7}),
]


def spec() -> SweepSpec:
    return parse_spec(SPEC)


def params_of(lr: float, threshold: float | None, number: int) -> dict[str, Any]:
    params: dict[str, Any] = {"lr": lr, "clip_method": "none" if threshold is None else "norm",
                              "warmup_steps": 10 * (number % 3)}
    if threshold is not None:
        params["clip_threshold"] = threshold
    return params


def make_study(trials: list[Any] = TRIALS, name: str = "demo",
               with_spec: bool = True) -> optuna.Study:
    study = optuna.create_study(study_name=name, direction="minimize")
    the_spec = spec()
    if with_spec:
        study.set_user_attr(keys.STUDY_SPEC, the_spec.to_dict())
    for number, (state, outcome, lr, threshold, value, steps, extra) in enumerate(trials):
        params = params_of(lr, threshold, number)
        config, args = config_from_params(params, the_spec)
        attrs = {keys.OUTCOME: outcome, keys.STEPS_RUN: steps, keys.CONFIG: config.to_dict(),
                 keys.WORKLOAD_ARGS: args, keys.WALL_TIME: 1.5, **extra}
        if outcome == keys.EXPLODED:
            attrs[keys.REASON] = f"exploded: {extra[keys.VERDICT]['kind']}"
        intermediate = {100: 0.01} if outcome == keys.EXPLODED else (
            {100: 0.9} if outcome == keys.SLOW else {})
        study.add_trial(create_trial(
            state=state, value=value, params=params,
            distributions={k: DISTS[k] for k in params}, user_attrs=attrs,
            intermediate_values=intermediate))
    return study


# ------------------------------------------------------------------ trials_frame
def test_trials_frame_columns_and_values() -> None:
    df = trials_frame(make_study())
    assert list(df.columns) == [
        "number", "state", "outcome", "reason", "value", "last_intermediate", "steps_run",
        "attempt", "retry_of", "onset_step", "first_layer", "verdict_kind", "wall_time_s",
        "exploded", "params_lr", "params_clip_method", "params_clip_threshold",
        "params_warmup_steps"]
    assert df["number"].tolist() == list(range(9))
    assert df["outcome"].tolist() == ["complete"] * 3 + ["exploded"] * 3 + [
        "slow", "failed", "complete"]
    assert df["exploded"].tolist() == [False] * 3 + [True] * 3 + [False] * 3
    row = df.iloc[3]
    assert (row["state"], row["onset_step"], row["first_layer"], row["verdict_kind"]) == (
        "PRUNED", 95, "layers.11", "nonfinite")
    assert math.isnan(row["value"]) and row["last_intermediate"] == 0.01
    assert math.isnan(row["params_clip_threshold"]) and row["params_lr"] == 0.5
    assert df.loc[1, "value"] == 0.30 and df.loc[1, "params_clip_threshold"] == 1.0
    assert df.loc[7, "reason"] == "RuntimeError: boom"
    assert df.loc[6, "reason"] == "pruned by Optuna's pruner"  # slow, no reason attr
    assert df.loc[8, "attempt"] == 2 and df.loc[8, "retry_of"] == 7
    assert df.loc[0, "attempt"] == 1 and pd.isna(df.loc[0, "retry_of"])
    assert df["steps_run"].sum() == 1170
    assert pd.isna(df.loc[0, "onset_step"]) and pd.isna(df.loc[0, "first_layer"])


def test_trials_frame_of_an_empty_study_and_outcome_from_state() -> None:
    assert trials_frame(optuna.create_study()).empty
    study = optuna.create_study()
    dist = {"lr": DISTS["lr"]}
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"lr": 0.1},
                                 distributions=dist, intermediate_values={5: 1.0}))
    study.add_trial(create_trial(state=TrialState.RUNNING, params={"lr": 0.2},
                                 distributions=dist))
    df = trials_frame(study)
    assert df["outcome"].tolist() == ["slow", "running"]
    assert df["exploded"].tolist() == [False, False]


# ------------------------------------------------------------------ tables
def test_explosion_rate_by_param_numbers() -> None:
    tables = explosion_rate_by_param(trials_frame(make_study()),
                                     ["lr", "clip_method", "clip_threshold"], bins=5)
    lr = tables["lr"]
    # rated trials: 8 (the failed one is left out); lr from 2e-4 to 0.8 in 5 log bins
    assert lr["trials"].tolist() == [2, 1, 1, 0, 4]
    assert lr["exploded"].tolist() == [0, 0, 0, 0, 3]
    assert lr["rate"].iloc[-1] == 0.75 and lr["rate"].iloc[0] == 0.0
    assert math.isnan(lr["rate"].iloc[3])
    assert lr["low"].iloc[0] == pytest.approx(2e-4) and lr["high"].iloc[-1] == 0.8
    assert lr["high"].iloc[0] == pytest.approx(2e-4 * 4000 ** 0.2)
    method = tables["clip_method"].set_index("bin")
    assert method.loc["none", "trials"] == 4 and method.loc["none", "rate"] == 0.5
    assert method.loc["norm", "trials"] == 4 and method.loc["norm", "rate"] == 0.25
    threshold = tables["clip_threshold"].set_index("bin")
    assert threshold.index.tolist() == ["0.5", "1.0", "2.0", "5.0", "inactive"]
    assert threshold.loc["2.0", "rate"] == 1.0 and threshold.loc["inactive", "rate"] == 0.5


def test_explosion_rate_linear_bins_and_errors() -> None:
    df = pd.DataFrame({"outcome": ["complete", "exploded"] * 3,
                       "exploded": [False, True] * 3, "momentum": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]})
    table = explosion_rate_by_param(df, ["momentum"], bins=2)["momentum"]
    assert table["bin"].tolist() == ["[0, 0.25)", "[0.25, 0.5]"]
    assert table["trials"].tolist() == [3, 3] and table["exploded"].tolist() == [1, 2]
    with pytest.raises(KeyError, match="param 'beta' is not in the trials frame"):
        explosion_rate_by_param(df, ["beta"])
    with pytest.raises(ValueError, match="bins must be an integer >= 1; got 0"):
        explosion_rate_by_param(df, ["momentum"], bins=0)


def test_compute_savings() -> None:
    study = make_study()
    study.add_trial(create_trial(state=TrialState.RUNNING, params={"lr": 0.1},
                                 distributions={"lr": DISTS["lr"]}))
    savings = compute_savings(trials_frame(study), 200)
    assert savings["trials"] == 9  # the running trial is left out
    # the failed trial ran 10 steps: 10 on both sides (pruning saved nothing there; issue 14)
    assert savings["steps_run"] == 1170 and savings["steps_budget"] == 1610
    assert savings["steps_saved"] == 440 and savings["fraction_saved"] == pytest.approx(440 / 1610)
    assert savings["saved_by_outcome"] == {"exploded": 340, "slow": 100}
    with pytest.raises(ValueError, match="steps_per_trial must be an integer >= 1; got 0"):
        compute_savings(trials_frame(study), 0)


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
