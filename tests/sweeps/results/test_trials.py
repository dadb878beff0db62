"""sweeps.results._trials: a study's trials as a table, explosion rates per param, and the steps
pruning saved; one trial's outcome and reason read from its attributes or, failing those, its
state. Studies are in memory: the demo study (tests/sweeps/results/demo_study.py) and hand-made
trials.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from sweeps.common import keys
from sweeps.results._trials import (
    compute_savings,
    explosion_rate_by_param,
    first_layer_of,
    outcome_of,
    param_column,
    reason_of,
    steps_accounting,
    study_spec,
    top_suggestion_of,
    trials_frame,
    verdict_kind_of,
)
from tests.sweeps.results.demo_study import DISTS, SPEC, make_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

LR = FloatDistribution(1e-4, 1.0, log=True)


def trial(state: TrialState = TrialState.COMPLETE, attrs: dict[str, Any] | None = None,
          **kwargs: Any) -> FrozenTrial:
    """A hand-made trial, as stored by Optuna (no study needed)."""
    if state == TrialState.COMPLETE:
        kwargs.setdefault("value", 0.5)
    return create_trial(state=state, user_attrs=attrs or {}, **kwargs)


# ------------------------------------------------------------------ trials_frame
def test_trials_frame_columns_and_values() -> None:
    df = trials_frame(make_study())
    assert list(df.columns) == [
        "number", "state", "outcome", "reason", "value", "last_intermediate", "steps_run",
        "skipped_updates", "attempt", "retry_of", "onset_step", "first_layer", "verdict_kind",
        "wall_time_s", "exploded", "params_lr", "params_clip_method", "params_clip_threshold",
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



def test_trials_frame_of_hand_made_trials_of_every_state() -> None:
    """A study stabsweep did not write (no spec): params come from the trials; a PRUNED trial
    that recorded ``exploded`` is one; FAIL and RUNNING rows have no value."""
    study = optuna.create_study(direction="minimize")
    dists = {"lr": LR, "opt": CategoricalDistribution(["sgd", "adam"])}
    study.add_trial(trial(value=0.4, params={"lr": 1e-3}, distributions={"lr": LR},
                          attrs={keys.STEPS_RUN: 50, keys.WALL_TIME: 2.25},
                          intermediate_values={40: 0.5, 10: 0.9}))
    study.add_trial(trial(TrialState.PRUNED, params={"lr": 0.5, "opt": "sgd"},
                          distributions=dists, intermediate_values={3: 1e12},
                          attrs={keys.OUTCOME: "exploded", keys.STEPS_RUN: 4,
                                 keys.ONSET_STEP: 2, keys.REASON: "exploded:  nonfinite\n",
                                 keys.DIAGNOSIS: {"first_layer": "net.2",
                                                  "verdict_kind": "nonfinite"}}))
    study.add_trial(trial(TrialState.FAIL, params={"opt": "adam"},
                          distributions={"opt": dists["opt"]},
                          attrs={keys.STEPS_RUN: 7, keys.WALL_TIME: "nan",
                                 keys.ERROR: "Traceback\n  x\nValueError: bad\n\n"}))
    study.add_trial(trial(TrialState.RUNNING, params={"lr": 0.01}, distributions={"lr": LR}))
    df = trials_frame(study)
    assert [c for c in df.columns if c.startswith("params_")] == ["params_lr", "params_opt"]
    assert df["state"].tolist() == ["COMPLETE", "PRUNED", "FAIL", "RUNNING"]
    assert df["outcome"].tolist() == ["complete", "exploded", "failed", "running"]
    assert df["exploded"].tolist() == [False, True, False, False]
    assert df.loc[0, "value"] == 0.4 and df["value"].iloc[1:].isna().all()
    assert df.loc[0, "last_intermediate"] == 0.5  # the latest step's value, not the last added
    assert df.loc[1, "last_intermediate"] == 1e12 and math.isnan(df.loc[3, "last_intermediate"])
    assert df["reason"].tolist() == ["", "exploded: nonfinite", "ValueError: bad", ""]
    assert (df.loc[1, "onset_step"], df.loc[1, "first_layer"], df.loc[1, "verdict_kind"]) == (
        2, "net.2", "nonfinite")
    assert str(df["steps_run"].dtype) == "Int64" and str(df["onset_step"].dtype) == "Int64"
    assert df["steps_run"].tolist()[:3] == [50, 4, 7] and pd.isna(df.loc[3, "steps_run"])
    assert df["attempt"].tolist() == [1, 1, 1, 1] and df["retry_of"].isna().all()
    assert df.loc[0, "wall_time_s"] == 2.25 and df["wall_time_s"].iloc[1:].isna().all()
    assert df.loc[2, "params_opt"] == "adam" and math.isnan(df.loc[2, "params_lr"])
    assert math.isnan(df.loc[0, "params_opt"])


def test_trials_frame_puts_the_specs_params_first() -> None:
    """The spec's space gives the first param columns (in its order, even before any trial
    suggested them); params only some trials have follow."""
    study = optuna.create_study()
    study.set_user_attr(keys.STUDY_SPEC, make_study().user_attrs[keys.STUDY_SPEC])
    study.add_trial(trial(params={"beta1": 0.9}, distributions={
        "beta1": FloatDistribution(0.0, 0.99)}))
    df = trials_frame(study)
    assert [c for c in df.columns if c.startswith("params_")] == [
        "params_lr", "params_clip_method", "params_clip_threshold", "params_warmup_steps",
        "params_beta1"]
    assert df.loc[0, "params_beta1"] == 0.9 and math.isnan(df.loc[0, "params_lr"])


def test_exploded_details_only_on_exploded_rows() -> None:
    """Onset, first layer and verdict kind recorded on a trial that did not explode (a run
    kept going past a verdict) stay out of the table."""
    study = optuna.create_study()
    attrs = {keys.OUTCOME: "complete", keys.ONSET_STEP: 5, keys.FIRST_LAYER: "net.0",
             keys.VERDICT: {"kind": "spike"}}
    study.add_trial(trial(attrs=attrs))
    row = trials_frame(study).iloc[0]
    assert not row["exploded"]
    assert pd.isna(row["onset_step"]) and row["first_layer"] is None
    assert row["verdict_kind"] is None


# ------------------------------------------------------------------ one trial
@pytest.mark.parametrize(("state", "outcome"), [
    (TrialState.COMPLETE, "complete"),
    (TrialState.PRUNED, "slow"),  # no recorded outcome: Optuna's pruner stopped it
    (TrialState.FAIL, "failed"),
    (TrialState.RUNNING, "running"),
    (TrialState.WAITING, "waiting"),
])
def test_outcome_of_a_trial_without_one_comes_from_its_state(state: TrialState,
                                                             outcome: str) -> None:
    assert outcome_of(trial(state)) == outcome


@pytest.mark.parametrize(("recorded", "state", "outcome"), [
    ("exploded", TrialState.PRUNED, "exploded"),
    ("worker_lost", TrialState.FAIL, "worker_lost"),
    ("interrupted", TrialState.FAIL, "interrupted"),
    ("slow", TrialState.PRUNED, "slow"),
    ("something_newer", TrialState.FAIL, "something_newer"),  # a word it does not know: kept
    ("", TrialState.FAIL, "failed"),  # empty: as if not recorded
])
def test_outcome_of_prefers_the_recorded_word(recorded: str, state: TrialState,
                                              outcome: str) -> None:
    assert outcome_of(trial(state, {keys.OUTCOME: recorded})) == outcome


@pytest.mark.parametrize(("state", "attrs", "reason"), [
    (TrialState.PRUNED, {keys.REASON: "exploded:\n  growth at   step 9 "},
     "exploded: growth at step 9"),
    (TrialState.FAIL, {keys.REASON: "worker died", keys.ERROR: "Traceback\nKeyError: x"},
     "worker died"),  # a reason wins over the error
    (TrialState.FAIL, {keys.ERROR: "Traceback (most recent call last):\n  File x\n"
                                   "  RuntimeError: boom  \n\n"}, "RuntimeError: boom"),
    (TrialState.FAIL, {keys.ERROR: " \n \n"}, ""),
    (TrialState.PRUNED, {}, "pruned by Optuna's pruner"),
    (TrialState.COMPLETE, {}, ""),
    (TrialState.FAIL, {}, ""),
])
def test_reason_of_falls_back_from_reason_to_error_to_state(
        state: TrialState, attrs: dict[str, Any], reason: str) -> None:
    assert reason_of(trial(state, attrs)) == reason


def test_verdict_layer_and_fix_fall_back_to_the_diagnosis() -> None:
    diagnosis = {"verdict_kind": "growth", "first_layer": "net.4",
                 "suggestions": [{"text": "clip the\n global norm", "changes": {}}]}
    from_diagnosis = trial(TrialState.PRUNED, {keys.DIAGNOSIS: diagnosis})
    assert verdict_kind_of(from_diagnosis) == "growth"
    assert first_layer_of(from_diagnosis) == "net.4"
    assert top_suggestion_of(from_diagnosis) == "clip the global norm"
    own = trial(TrialState.PRUNED, {keys.DIAGNOSIS: diagnosis, keys.FIRST_LAYER: "net.0",
                                    keys.VERDICT: {"kind": "nonfinite"}})
    assert (verdict_kind_of(own), first_layer_of(own)) == ("nonfinite", "net.0")
    bare = trial(TrialState.PRUNED, {keys.DIAGNOSIS: "not a mapping"})
    assert verdict_kind_of(bare) is None and first_layer_of(bare) is None
    assert top_suggestion_of(bare) is None
    assert top_suggestion_of(trial(attrs={keys.DIAGNOSIS: {"suggestions": []}})) is None


def test_study_spec_is_none_when_absent_or_invalid() -> None:
    study = optuna.create_study(study_name="s")
    assert study_spec(study) is None
    study.set_user_attr(keys.STUDY_SPEC, {"study": "s", "space": "not a mapping"})
    assert study_spec(study) is None
    study.set_user_attr(keys.STUDY_SPEC, SPEC)
    spec = study_spec(study)
    assert spec is not None and list(spec.space) == list(SPEC["space"])


# ------------------------------------------------------------------ rates
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


def rated(values: list[Any], exploded: list[bool], outcomes: list[str] | None = None
          ) -> pd.DataFrame:
    outcomes = outcomes or ["exploded" if e else "complete" for e in exploded]
    return pd.DataFrame({"outcome": outcomes, "exploded": exploded, "params_x": values})


def test_explosion_rate_log_bins_when_positive_values_span_ten_times() -> None:
    values = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1]
    table = explosion_rate_by_param(rated(values, [False] * 5 + [True] * 2), ["x"],
                                    bins=3)["x"]
    assert table["low"].tolist() == pytest.approx([1e-4, 1e-4 * 10 ** 1, 1e-4 * 10 ** 2])
    assert table["high"].tolist() == pytest.approx([1e-3, 1e-2, 0.1])
    assert table["bin"].tolist() == ["[0.0001, 0.001)", "[0.001, 0.01)", "[0.01, 0.1]"]
    # [low, high): 1e-3 goes up a bin; the last bin is closed (0.1 is in it)
    assert table["trials"].tolist() == [2, 2, 3]
    assert table["exploded"].tolist() == [0, 0, 2]
    assert table["rate"].tolist() == pytest.approx([0.0, 0.0, 2 / 3])


@pytest.mark.parametrize("values", [
    [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # positive, under 10x: linear
    [-1.0, 0.0, 1.0, 2.0, 3.0, 5.0],  # not all positive: linear
])
def test_explosion_rate_linear_bins_otherwise(values: list[float]) -> None:
    table = explosion_rate_by_param(rated(values, [False] * 6), ["x"], bins=2)["x"]
    middle = (values[0] + values[-1]) / 2
    assert table["low"].tolist() == pytest.approx([values[0], middle])
    assert table["high"].tolist() == pytest.approx([middle, values[-1]])
    assert table["trials"].sum() == 6


def test_explosion_rate_few_values_are_categories_with_an_inactive_row() -> None:
    df = rated([0.5, 0.1, 0.5, None, None, 0.1, 0.1], [True, False, False, True, False,
                                                        False, True])
    table = explosion_rate_by_param(df, ["x"], bins=5)["x"]
    assert table["bin"].tolist() == ["0.1", "0.5", "inactive"]  # sorted numbers, then inactive
    assert table["trials"].tolist() == [3, 2, 2] and table["exploded"].tolist() == [1, 1, 1]
    assert table["rate"].tolist() == pytest.approx([1 / 3, 0.5, 0.5])
    assert table["low"].isna().all() and table["high"].isna().all()


def test_explosion_rate_counts_only_rated_outcomes() -> None:
    """Failed, lost, interrupted and running trials say nothing about stability."""
    outcomes = ["complete", "exploded", "slow", "failed", "worker_lost", "interrupted",
                "running"]
    df = rated(["a", "a", "a", "a", "b", "b", "b"], [False, True, False, False, False, False,
                                                      False], outcomes)
    table = explosion_rate_by_param(df, ["x"])["x"]
    assert table["bin"].tolist() == ["a"] and table["trials"].tolist() == [3]
    assert table["rate"].tolist() == pytest.approx([1 / 3])


def test_explosion_rate_of_a_bool_param_is_categorical_and_names_are_found_bare() -> None:
    df = pd.DataFrame({"outcome": ["complete"] * 8, "exploded": [False] * 7 + [True],
                       "flag": [True, False] * 4})
    assert param_column(df, "flag") == "flag"  # no params_ prefix: the column itself
    table = explosion_rate_by_param(df, ["flag"], bins=1)["flag"]
    assert sorted(table["bin"]) == ["False", "True"] and table["trials"].sum() == 8


def test_explosion_rate_errors_name_the_missing_column() -> None:
    df = rated([1.0, 2.0], [False, True])
    with pytest.raises(KeyError, match=r"no column params_y or y\); params present: x"):
        explosion_rate_by_param(df, ["y"])
    with pytest.raises(KeyError, match="needs column 'exploded'"):
        explosion_rate_by_param(df.drop(columns="exploded"), ["x"])
    for bad in (True, 2.5, -1):
        with pytest.raises(ValueError, match="bins must be an integer >= 1"):
            explosion_rate_by_param(df, ["x"], bins=bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ savings
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


@pytest.mark.parametrize(("state", "steps_run", "expected"), [
    ("COMPLETE", 200, (200, 200)),
    ("PRUNED", 50, (50, 200)),  # pruned at 50: 150 saved
    ("PRUNED", None, (200, 200)),  # not recorded: no saving claimed
    ("PRUNED", math.nan, (200, 200)),
    ("PRUNED", pd.NA, (200, 200)),
    ("COMPLETE", 250, (200, 200)),  # clipped to the run length
    ("PRUNED", -3, (0, 200)),
    ("FAIL", 30, (30, 30)),  # a failure stops where it stops, pruning or not
    ("FAIL", None, (0, 0)),
    ("FAIL", 900, (200, 200)),
])
def test_steps_accounting(state: str, steps_run: Any, expected: tuple[int, int]) -> None:
    assert steps_accounting(state, steps_run, 200) == expected


def test_compute_savings_of_hand_made_rows() -> None:
    df = pd.DataFrame({
        "state": ["COMPLETE", "PRUNED", "PRUNED", "FAIL", "RUNNING", "WAITING"],
        "outcome": ["complete", "exploded", "slow", "worker_lost", "running", "waiting"],
        "steps_run": pd.array([100, 20, 60, 5, 40, None], dtype="Int64")})
    savings = compute_savings(df, 100)
    assert savings == {"trials": 4, "steps_per_trial": 100, "steps_run": 185,
                       "steps_budget": 305, "steps_saved": 120,
                       "fraction_saved": pytest.approx(120 / 305),
                       "saved_by_outcome": {"exploded": 80, "slow": 40}}


def test_compute_savings_of_nothing_finished() -> None:
    df = pd.DataFrame({"state": ["RUNNING"], "outcome": ["running"], "steps_run": [3]})
    savings = compute_savings(df, 10)
    assert savings["trials"] == 0 and savings["steps_budget"] == 0
    assert savings["fraction_saved"] == 0.0 and savings["saved_by_outcome"] == {}
    for bad in (True, 1.5):
        with pytest.raises(ValueError, match="steps_per_trial must be an integer >= 1"):
            compute_savings(df, bad)  # type: ignore[arg-type]
