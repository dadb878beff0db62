"""sweeps.store.studies and sweeps.driver.summary: opening, resuming and finding a study;
closing the trials a stopped driver left running; the numbers a run ends with."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from sweeps.common import Outcome, SweepError, keys
from sweeps.driver.summary import summarize
from sweeps.spec import parse_spec, suggest
from sweeps.store import (
    StudyNotFound,
    finished_count,
    load_study,
    open_study,
    recover_stale,
    retry,
)
from tests.sweep_helpers import small_spec

LR = {"lr": FloatDistribution(1e-3, 30.0, log=True)}


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'stabsweep.db'}"


def test_open_creates_then_resumes_and_refuses_another_spec(tmp_path: Path) -> None:
    spec = parse_spec(small_spec(study="s"))
    study = open_study(spec, _url(tmp_path), "db")
    assert study.user_attrs[keys.STUDY_SIGNATURE] == spec.space_signature()
    assert keys.STUDY_VERSION in study.user_attrs
    study.tell(study.ask(LR), 0.5)
    again = open_study(spec, _url(tmp_path), "db")
    assert len(again.trials) == 1  # resumed, not reset
    changed = parse_spec(small_spec(study="s", steps=80))
    with pytest.raises(SweepError, match="different search space") as info:
        open_study(changed, _url(tmp_path), "db")
    assert info.value.option == "study"
    flipped = parse_spec(small_spec(study="s", objective={"metric": "eval_loss",
                                                          "direction": "maximize"}))
    with pytest.raises(SweepError) as info:
        open_study(flipped, _url(tmp_path), "db")
    assert info.value.option == "study"


def _ask(study: optuna.Study, spec: Any) -> tuple[Any, ...]:
    trial = study.ask()
    suggest(trial, spec)
    return trial, tuple(sorted(trial.params.items()))


@pytest.mark.parametrize("sampler", [{"name": "random"}, {"name": "tpe", "n_startup_trials": 8},
                                     {"name": "tpe", "n_startup_trials": 2}])
def test_a_resumed_study_proposes_no_configuration_it_already_has(tmp_path: Path,
                                                                  sampler: dict) -> None:
    """Issue 22 item 1: each driver that resumes builds its sampler anew; seeded with the
    spec's seed it replayed the first trials' configurations. Five drivers here, stopped after
    a few trials each (one leaves a trial running, as kill -9 does), inside and after TPE's
    random start-up."""
    spec = parse_spec(small_spec(study="r", n_trials=14, sampler=sampler))
    seen = []
    for stop_after, left_running in ((2, False), (3, True), (1, False), (4, False), (3, True)):
        study = open_study(spec, _url(tmp_path), "db")  # a new driver: a new sampler
        for i in range(stop_after):
            trial, params = _ask(study, spec)
            seen.append(params)
            if not (left_running and i == stop_after - 1):
                study.tell(trial, float(trial.params["lr"]))
    assert len(set(seen)) == len(seen), seen


def test_the_same_resume_proposes_the_same(tmp_path: Path) -> None:
    spec = parse_spec(small_spec(study="r", n_trials=8))
    study = open_study(spec, _url(tmp_path), "db")
    for _ in range(3):
        trial, _params = _ask(study, spec)
        study.tell(trial, 1.0)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "stabsweep.db").write_bytes((tmp_path / "stabsweep.db").read_bytes())
    first = _ask(open_study(spec, _url(tmp_path), "db"), spec)[1]
    assert _ask(open_study(spec, _url(copy), "db"), spec)[1] == first


def test_load_study_says_what_is_there(tmp_path: Path) -> None:
    with pytest.raises(StudyNotFound, match=r"no study storage at .*stabsweep\.db"):
        load_study("s", workdir=tmp_path)
    optuna.create_study(study_name="real", storage=_url(tmp_path))
    with pytest.raises(StudyNotFound, match=r"no study 'nope' in .*; studies there: real\.") \
            as info:
        load_study("nope", _url(tmp_path))
    assert info.value.option == "storage"
    assert load_study("real", workdir=tmp_path).study_name == "real"


def test_recover_closes_running_trials_with_their_known_steps_and_retries_them() -> None:
    study = optuna.create_study()
    stored = study.ask(LR)
    stored.set_user_attr(keys.STEPS_RUN, 23)
    stored.set_user_attr(keys.ATTEMPT, 3)  # its retries are used up (max_retries 2)
    reported = study.ask(LR)
    reported.report(0.4, 300)               # beyond the budget: capped at steps
    seen: list[int] = []
    recover_stale(study, steps=100, max_retries=2, reason="stopped",
                  on_recovered=lambda frozen: seen.append(frozen.number))
    first, second = study.trials[:2]
    assert first.state == second.state == TrialState.FAIL
    assert first.user_attrs[keys.OUTCOME] == Outcome.INTERRUPTED
    assert (first.user_attrs[keys.STEPS_RUN], second.user_attrs[keys.STEPS_RUN]) == (23, 100)
    assert seen == [0, 1]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs[keys.RETRY_OF] for t in waiting] == [1]  # trial 0 is not retried
    assert waiting[0].user_attrs[keys.ATTEMPT] == 2


def test_recover_on_a_shared_store_only_touches_stale_trials() -> None:
    study = optuna.create_study()
    live, dead = study.ask(LR), study.ask(LR)
    recover_stale(study, steps=10, max_retries=2, reason="no heartbeat",
                  stale_ids=[dead._trial_id])
    assert study.trials[live.number].state == TrialState.RUNNING
    assert study.trials[dead.number].state == TrialState.FAIL


def test_retry_stops_after_max_retries() -> None:
    study = optuna.create_study()
    assert retry(study, 4, {"lr": 0.1}, attempt=1, max_retries=1)
    assert not retry(study, 4, {"lr": 0.1}, attempt=2, max_retries=1)
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1


def test_summary_counts_outcomes_steps_and_the_best() -> None:
    study = optuna.create_study(study_name="s")

    def add(state: TrialState, outcome: str | None, steps: int, value: float | None = None
            ) -> None:
        attrs = {keys.STEPS_RUN: steps} | ({keys.OUTCOME: outcome} if outcome else {})
        study.add_trial(create_trial(state=state, value=value, params={"lr": 0.1},
                                     distributions=LR, user_attrs=attrs))

    add(TrialState.COMPLETE, "complete", 100, 0.3)
    add(TrialState.COMPLETE, "complete", 100, 0.2)
    add(TrialState.PRUNED, "exploded", 10)
    add(TrialState.PRUNED, None, 40)                  # Optuna's pruner: slow
    add(TrialState.FAIL, "worker_lost", 30)
    summary = summarize(study, steps=100, storage="mem", started=time.perf_counter() - 1)
    assert summary.counts == {"complete": 2, "exploded": 1, "slow": 1, "worker_lost": 1}
    assert summary.n_trials == 4
    assert (summary.steps_run, summary.steps_budget) == (280, 430)
    assert summary.steps_saved == pytest.approx(150 / 430)
    assert summary.best == {"number": 1, "value": 0.2, "params": {"lr": 0.1}}
    assert summary.count(Outcome.EXPLODED, Outcome.SLOW) == 2
    assert summary.wall_time_s >= 1.0
    assert finished_count(study) == 4


def test_a_recovered_trial_ends_its_mlflow_run_too(tmp_path: Path) -> None:
    """A dead driver's trial is closed in Optuna and its MLflow run ends KILLED (interrupted),
    not RUNNING forever in the UI."""
    from sweeps.driver import RunOptions, TrialRecovered
    from sweeps.driver.dispatch import recover

    class Tracker:
        def __init__(self) -> None:
            self.closed: list[tuple[str, str, str, int | None]] = []

        def close_trial_run(self, run_id: str, outcome: str, reason: str,
                            steps: int | None = None) -> None:
            self.closed.append((run_id, outcome, reason, steps))

    study = optuna.create_study()
    tracked, untracked = study.ask(LR), study.ask(LR)
    tracked.set_user_attr(keys.MLFLOW_RUN, "run-abc")
    tracked.report(0.5, 17)  # the worker had reported step 17: the run records those steps
    storage = type("Storage", (), {"shared": False})()
    events: list[object] = []
    tracker = Tracker()
    recover(study, storage, parse_spec(small_spec()), RunOptions(workdir=tmp_path),
            events.append, tracker, "stopped")
    assert tracker.closed == [("run-abc", Outcome.INTERRUPTED, "stopped", 17)]
    assert events == [TrialRecovered(tracked.number), TrialRecovered(untracked.number)]
