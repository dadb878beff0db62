"""Regret of explosion pruning on a tiny in-process study (no Ray), and the no-stop option.

A false-alarm detector (added to the default composite) fires at step 5 for two chosen learning
rates, so the study holds two trials stopped as "exploded" that were in fact stable: one good
(it would rank 2nd of the study) and one poor (it would rank last). A third trial really
explodes (lr 3). Regret must rerun all three to the end, find the first two stable and the
third not, and count exactly one lost top-3 trial.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

from stability.detectors import CompositeDetector, Detector
from stability.records import StepRecord, Verdict
from sweeps.common import Outcome, keys
from sweeps.results.regret import RegretError, RerunOutcome, explosion_regret, rerun_tasks
from sweeps.spec import SpecError, parse_spec, suggest
from sweeps.worker import PENALTY, TrialTask, run_trial

STEPS = 60
FALSE_ALARM_LRS = (0.01, 0.3)
FALSE_ALARM_STEP = 5
LRS = (0.003, 0.01, 0.03, 0.1, 0.3, 3.0)
"""SGD on a 3-layer MLP, 60 steps: 0.03 best, then 0.01, 0.1, 0.003, 0.3; 3.0 explodes."""


class FalseAlarm(Detector):
    """Fires at FALSE_ALARM_STEP when the step's lr is one of FALSE_ALARM_LRS."""

    kind = "false_alarm"

    def observe(self, step: int, stats: StepRecord) -> Verdict | None:
        if step == FALSE_ALARM_STEP and any(math.isclose(stats.lr, lr) for lr in FALSE_ALARM_LRS):
            return self._verdict(step, stats.lr, 0.0, None, "planted false alarm")
        return None


@pytest.fixture()
def false_alarms(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_trial imports detector_for at call time: wrap the real one with the alarm."""
    import stability.detectors as detectors

    real = detectors.detector_for

    def with_alarm(*args: Any, **kwargs: Any) -> CompositeDetector:
        return CompositeDetector([*real(*args, **kwargs).detectors, FalseAlarm()])

    monkeypatch.setattr(detectors, "detector_for", with_alarm)


def tiny_spec(study: str = "regret", **overrides: Any) -> Any:
    data: dict[str, Any] = {
        "study": study,
        "workload": {"name": "deep_mlp", "args": {"depth": 3, "width": 8, "batch_size": 16}},
        "steps": STEPS, "eval_every": STEPS, "report_every": 10,
        "objective": {"metric": "eval_loss", "direction": "minimize"},
        "n_trials": len(LRS), "seed": 0, "sampler": {"name": "random"},
        "fixed": {"optimizer": "sgd"},
        "space": {"lr": {"type": "float", "low": 1e-3, "high": 10.0, "log": True}},
    }
    data.update(overrides)
    return parse_spec(data)


def task_for(spec: Any, number: int, config: dict[str, Any], workload_args: dict[str, Any]
             ) -> TrialTask:
    return TrialTask(
        study_name=spec.study, trial_number=number, trial_id=number, config=config,
        workload=spec.workload.name, workload_args=workload_args, steps=spec.steps,
        eval_every=spec.eval_every, report_every=spec.report_every, seed=spec.seed,
        metric=spec.objective.metric, direction=spec.objective.direction,
        detector=dict(spec.detector), stop_on_explosion=spec.stop_on_explosion)


def run_study(spec: Any) -> optuna.Study:
    """The driver's ask / run / tell, in process: one trial per lr of LRS, in order."""
    study = optuna.create_study(study_name=spec.study, direction="minimize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr(keys.STUDY_SPEC, spec.to_dict())
    for lr in LRS:
        study.enqueue_trial({"lr": lr})
        trial = study.ask()
        config, workload_args = suggest(trial, spec)
        trial.set_user_attr(keys.CONFIG, config.to_dict())
        trial.set_user_attr(keys.WORKLOAD_ARGS, workload_args)
        outcome = run_trial(task_for(spec, trial.number, config.to_dict(), workload_args))
        for key, value in outcome.user_attrs().items():
            trial.set_user_attr(key, value)
        if outcome.outcome == Outcome.COMPLETE:
            study.tell(trial, outcome.value)
        else:
            assert outcome.outcome == Outcome.EXPLODED, outcome.reason
            trial.report(PENALTY, max(outcome.steps_run, 1))
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return study


def test_regret_counts_the_stable_top3_trial_explosion_pruning_lost(false_alarms: None) -> None:
    study = run_study(tiny_spec())
    trials = {t.params["lr"]: t for t in study.trials}
    exploded = sorted(lr for lr, t in trials.items()
                      if t.user_attrs.get(keys.OUTCOME) == Outcome.EXPLODED)
    assert exploded == [0.01, 0.3, 3.0]
    assert trials[0.01].user_attrs[keys.STEPS_RUN] <= FALSE_ALARM_STEP + 1
    assert len(rerun_tasks(study)) == 3

    report = explosion_regret(study)

    assert len(report.completed) == 3  # lr 0.003, 0.03, 0.1
    by_lr = {trials_lr: r for r in report.reruns
             for trials_lr, t in trials.items() if t.number == r.number}
    good, poor, real = by_lr[0.01], by_lr[0.3], by_lr[3.0]
    assert good.stable and good.rerun_steps == STEPS and good.verdict_step == FALSE_ALARM_STEP
    assert good.loss_last < good.loss_first
    assert good.rank is not None and good.rank <= 3 and good.top_k
    assert poor.stable and poor.rank == 4 and not poor.top_k
    assert not real.stable and not real.top_k and real.rerun_steps == STEPS
    assert not real.loss_last < real.loss_first  # diverged (or non-finite)
    assert (report.n_stopped, report.n_stable, report.n_lost) == (3, 2, 1)
    assert "1 would rank in the top 3" in report.summary()
    assert explosion_regret(study, top_k=4).n_lost == 2  # the poor one ranks exactly 4th


def test_regret_runs_reruns_through_map_tasks(false_alarms: None) -> None:
    study = run_study(tiny_spec())
    seen: list[TrialTask] = []

    def mapper(fn: Any, tasks: Any) -> list[Any]:
        seen.extend(tasks)
        return [fn(task) for task in tasks]

    report = explosion_regret(study, map_tasks=mapper)
    assert report.n_lost == 1
    assert len(seen) == 3
    assert all(not t.stop_on_explosion and t.storage is None and t.steps == STEPS for t in seen)


def test_rerun_errors_are_reported_as_errors(false_alarms: None) -> None:
    """Issue 22 item 7: a workload that could not be imported read as "0 ended stable and 0
    would rank in the top 3", the error kept inside RerunOutcome.error."""
    study = run_study(tiny_spec())
    error = "ModuleNotFoundError: No module named 'myw'"

    def failing(fn: Any, tasks: Any) -> list[RerunOutcome]:
        return [RerunOutcome(t.trial_number, 0, math.nan, None, math.nan, math.nan, error=error)
                for t in tasks]

    with pytest.raises(RegretError, match=r"every rerun failed, so nothing is known about the "
                                          r"pruning; trial \d+: ModuleNotFoundError"):
        explosion_regret(study, map_tasks=failing)

    def one_fails(fn: Any, tasks: Any) -> list[RerunOutcome]:
        return [RerunOutcome(t.trial_number, STEPS, 0.5, None, 1.0, 0.5) for t in tasks[:-1]] \
            + failing(fn, tasks[-1:])

    report = explosion_regret(study, map_tasks=one_fails)
    assert [r.error for r in report.failed] == [error]
    assert report.summary().endswith(f"; ERROR: 1 of 3 reruns failed and are not counted "
                                     f"(trial {report.failed[0].number}: {error})")


def test_stop_on_explosion_false_runs_on_and_records_the_onset(false_alarms: None) -> None:
    spec = tiny_spec(stop_on_explosion=False)
    config = {"optimizer": "sgd", "lr": 0.01}
    args = dict(spec.workload.args)
    stopped = run_trial(task_for(tiny_spec(), 0, config, args))
    ran_on = run_trial(task_for(spec, 0, config, args))
    assert stopped.outcome == Outcome.EXPLODED and stopped.steps_run <= FALSE_ALARM_STEP + 1
    assert ran_on.outcome == Outcome.COMPLETE and ran_on.steps_run == STEPS
    assert ran_on.verdict is not None and ran_on.verdict["step"] == FALSE_ALARM_STEP
    attrs = ran_on.user_attrs()
    assert attrs[keys.ONSET_STEP] is not None and attrs[keys.ONSET_STEP] <= FALSE_ALARM_STEP
    # no stop even when the run blows up: it trains (uselessly) to its last step
    blown = run_trial(task_for(spec, 1, {"optimizer": "sgd", "lr": 3.0}, args))
    assert blown.steps_run == STEPS and blown.verdict is not None


def test_stop_on_explosion_spec_key() -> None:
    assert tiny_spec().stop_on_explosion is True
    assert "stop_on_explosion" not in tiny_spec().to_dict()
    off = tiny_spec(stop_on_explosion=False)
    assert off.stop_on_explosion is False
    assert parse_spec(off.to_dict()).stop_on_explosion is False
    assert off.space_signature() == tiny_spec().space_signature()
    with pytest.raises(SpecError, match="stop_on_explosion"):
        tiny_spec(stop_on_explosion="no")


def test_successive_halving_pruner_from_the_spec() -> None:
    from sweeps.spec import make_pruner

    spec = tiny_spec(pruner={"name": "successive_halving", "reduction_factor": 3})
    pruner = make_pruner(spec)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert pruner._min_resource == spec.report_every  # not "auto": acts before any completes
    with pytest.raises(SpecError, match=r"pruner\.min_resource"):
        tiny_spec(pruner={"name": "successive_halving", "min_resource": STEPS})
