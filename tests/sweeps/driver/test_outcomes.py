"""sweeps.common.outcomes and sweeps.driver.tell: each ending's Optuna state and look, and what
the driver records for it."""

from __future__ import annotations

import json
import time

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from sweeps.common import Outcome, keys
from sweeps.driver.summary import summarize
from sweeps.driver.tell import tell_lost, tell_outcome
from sweeps.worker import PENALTY, TrialOutcome

DIST = {"lr": FloatDistribution(1e-3, 1.0, log=True)}


def test_each_outcome_has_a_state_and_a_look() -> None:
    states = {o: o.state for o in Outcome}
    assert states == {Outcome.COMPLETE: "COMPLETE", Outcome.RESCUED: "COMPLETE",
                      Outcome.EXPLODED: "PRUNED",
                      Outcome.SLOW: "PRUNED", Outcome.FAILED: "FAIL",
                      Outcome.WORKER_LOST: "FAIL", Outcome.INTERRUPTED: "FAIL",
                      Outcome.RUNNING: "RUNNING", Outcome.WAITING: "WAITING"}
    assert [o for o in Outcome if o.finished] == [Outcome.COMPLETE, Outcome.RESCUED,
                                                  Outcome.EXPLODED, Outcome.SLOW]
    assert [o for o in Outcome if o.completed] == [Outcome.COMPLETE, Outcome.RESCUED]
    assert Outcome.RESCUED.look.mlflow_status == "FINISHED"
    assert [o for o in Outcome if o.retried] == [Outcome.WORKER_LOST, Outcome.INTERRUPTED]
    assert Outcome.EXPLODED.look.mlflow_status == "KILLED"       # the red run in MLflow
    assert Outcome.INTERRUPTED.look.mlflow_status == "KILLED"
    assert Outcome.FAILED.look.mlflow_status == "FAILED"
    assert Outcome.SLOW.look.mlflow_status == "FINISHED"
    assert "red" in Outcome.EXPLODED.look.style
    assert all(o.look.color.startswith("#") and len(o.look.color) == 7 for o in Outcome)
    assert [TrialState[o.state].name for o in Outcome] == [o.state for o in Outcome]


def test_the_stored_word_is_unchanged() -> None:
    assert json.dumps({"o": Outcome.EXPLODED}) == '{"o": "exploded"}'
    assert Outcome.EXPLODED == "exploded" and f"{Outcome.SLOW:<6}|" == "slow  |"
    assert Outcome.parse("worker_lost") is Outcome.WORKER_LOST
    assert Outcome.parse("pruned") is None and Outcome.parse(None) is None
    assert Outcome.of_state("PRUNED") is Outcome.SLOW  # a pruned trial without a word
    with pytest.raises(KeyError):
        Outcome.of_state("DONE")


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_an_explosion_is_pruned_with_a_penalty_below_every_stable_trial(direction: str) -> None:
    study = optuna.create_study(direction=direction)
    trial = study.ask(DIST)
    result = TrialOutcome(trial.number, Outcome.EXPLODED, None, "exploded: spike",
                          steps_run=37, intermediate=[(10, 0.5), (20, 0.4)])
    assert tell_outcome(study, trial, result) is Outcome.EXPLODED
    frozen = study.trials[0]
    assert frozen.state == TrialState.PRUNED
    sign = 1.0 if direction == "minimize" else -1.0
    assert frozen.intermediate_values == {10: 0.5, 20: 0.4, 37: sign * PENALTY}
    assert frozen.user_attrs[keys.OUTCOME] == "exploded"
    assert frozen.user_attrs[keys.STEPS_RUN] == 37


def test_complete_slow_and_failed_trials() -> None:
    study = optuna.create_study()
    ends = [TrialOutcome(0, Outcome.COMPLETE, 0.25, "completed", steps_run=40,
                         intermediate=[(40, 0.25), (50, float("nan"))]),
            TrialOutcome(1, Outcome.SLOW, 0.9, "pruned", steps_run=20,
                         intermediate=[(10, 0.9)], reported_by_worker=True),
            TrialOutcome(2, Outcome.FAILED, None, "workload raised", error="Traceback ...")]
    for result in ends:
        tell_outcome(study, study.ask(DIST), result)
    complete, slow, failed = study.trials
    assert (complete.state, complete.value) == (TrialState.COMPLETE, 0.25)
    assert complete.intermediate_values == {40: 0.25}  # a NaN report is left out
    assert slow.state == TrialState.PRUNED and slow.value is None
    assert slow.intermediate_values == {}  # the worker reported it already
    assert failed.state == TrialState.FAIL and failed.user_attrs[keys.ERROR] == "Traceback ..."


def test_a_lost_trial_keeps_why_and_the_steps_it_ran() -> None:
    study = optuna.create_study()
    trial = study.ask(DIST)
    tell_lost(study, trial, Outcome.WORKER_LOST, "worker lost", steps_run=12, wall_time_s=1.23456)
    frozen = study.trials[0]
    assert frozen.state == TrialState.FAIL
    assert {k: frozen.user_attrs[k] for k in (keys.OUTCOME, keys.REASON, keys.STEPS_RUN,
                                               keys.WALL_TIME)} == {
        keys.OUTCOME: "worker_lost", keys.REASON: "worker lost", keys.STEPS_RUN: 12,
        keys.WALL_TIME: 1.235}


def test_a_rescued_trial_is_complete_with_its_value_and_its_own_word() -> None:
    study = optuna.create_study()
    trial = study.ask(DIST)
    result = TrialOutcome(trial.number, Outcome.RESCUED, 0.25, "rescued: 1 skipped update",
                          steps_run=40, skipped_updates=1)
    assert tell_outcome(study, trial, result) is Outcome.RESCUED
    frozen = study.trials[0]
    assert (frozen.state, frozen.value) == (TrialState.COMPLETE, 0.25)
    assert frozen.user_attrs[keys.OUTCOME] == "rescued"
    assert study.best_trial.number == trial.number
    again = study.ask(DIST)
    tell_outcome(study, again, TrialOutcome(again.number, Outcome.RESCUED, 0.5, "rescued",
                                            steps_run=40, skipped_updates=4))
    summary = summarize(study, steps=40, storage="mem", started=time.perf_counter())
    assert summary.counts == {"rescued": 2} and summary.rescued_skipped == 5
    assert summary.best is not None and summary.best["number"] == trial.number
