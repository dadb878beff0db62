"""Regret of explosion pruning: would a trial stopped as exploded have ended well?

Explosion pruning saves steps only if it stops trials that would have ended badly. The check:
rerun every trial of a finished study that was PRUNED as ``exploded`` to its full step budget,
with the same params, workload arguments, detector and seed, and with explosion stopping off
(the verdict is still recorded, as ``stop_on_explosion: false`` does). A rerun *ended stable*
when it ran every step to a finite objective and its training loss over the last report
interval is finite and below that of the first (median over each): it did not diverge. A
stable rerun whose value would rank among the study's ``top_k`` completed values is a trial
the pruning *lost*.

    from sweeps.results.regret import explosion_regret
    report = explosion_regret(study)          # the spec is read from the study's attributes
    print(report.summary())                   # "12 stopped as exploded: 1 would have ended ..."

Reruns run in this process (one after another) unless ``map_tasks`` is given: called as
``map_tasks(rerun_trial, tasks)`` like the builtin ``map``, it may run :func:`rerun_trial` on
each :class:`~sweeps.worker.objective.TrialTask` elsewhere (Ray workers) and returns the
:class:`RerunOutcome` list in order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweeps.common import Outcome, SweepError, keys
from sweeps.worker import TrialTask

if TYPE_CHECKING:
    import optuna

    from sweeps.spec import SweepSpec

__all__ = ["RegretError", "RegretReport", "Rerun", "RerunOutcome", "explosion_regret",
           "rerun_tasks", "rerun_trial"]


@dataclass(frozen=True, slots=True)
class RerunOutcome:
    """What :func:`rerun_trial` saw: plain, picklable data."""

    trial_number: int
    steps_run: int
    value: float
    """the objective metric at the end (NaN when the workload does not report it)."""
    verdict_step: int | None
    """step of the first detector verdict (None: none fired)."""
    loss_first: float
    """median training loss over the first report interval."""
    loss_last: float
    """median training loss over the last report interval."""
    error: str | None = None


class RegretError(SweepError):
    """No rerun could run (the workload raised in every one): the regret is unknown."""


TaskMapper = Callable[[Callable[[TrialTask], RerunOutcome], Sequence[TrialTask]],
                      Sequence[RerunOutcome]]


@dataclass(frozen=True, slots=True)
class Rerun:
    """One trial stopped as exploded, and how its run to the end went."""

    number: int
    """the study's trial number."""
    stopped_at: int
    """steps the trial ran before explosion pruning stopped it."""
    onset_step: int | None
    """explosion onset the study recorded."""
    rerun_steps: int
    rerun_value: float | None
    """objective at the end of the rerun (None when it failed)."""
    loss_first: float
    loss_last: float
    """median training loss over the rerun's first / last report interval."""
    verdict_step: int | None
    """step at which the detector fired again in the rerun (None: it did not)."""
    stable: bool
    """the rerun ran every step to a finite objective, its last-interval loss finite and below
    its first-interval loss."""
    rank: int | None
    """1-based rank of the rerun's value among the study's completed values (stable only)."""
    top_k: bool
    """stable and ranked within the report's ``top_k``: a good trial the pruning lost."""
    error: str | None = None
    """why the rerun failed (the workload raised); such a rerun is not counted."""


@dataclass(frozen=True, slots=True)
class RegretReport:
    study: str
    top_k: int
    direction: str
    completed: list[float]
    """the study's COMPLETE values, best first."""
    reruns: list[Rerun] = field(default_factory=list)

    @property
    def n_stopped(self) -> int:
        return len(self.reruns)

    @property
    def n_stable(self) -> int:
        return sum(r.stable for r in self.reruns)

    @property
    def n_lost(self) -> int:
        """trials stopped as exploded that would have ended stable and in the top ``top_k``."""
        return sum(r.top_k for r in self.reruns)

    @property
    def rerun_steps(self) -> int:
        return sum(r.rerun_steps for r in self.reruns)

    @property
    def failed(self) -> list[Rerun]:
        """reruns whose workload raised: they say nothing about the pruning."""
        return [r for r in self.reruns if r.error is not None]

    def summary(self) -> str:
        lost = [r.number for r in self.reruns if r.top_k]
        text = (f"{self.study}: {self.n_stopped} trials stopped as exploded; rerun to the end, "
                f"{self.n_stable} ended stable and {self.n_lost} would rank in the top "
                f"{self.top_k}" + (f" (trials {', '.join(map(str, lost))})" if lost else ""))
        if self.failed:
            first = self.failed[0]
            text += (f"; ERROR: {len(self.failed)} of {self.n_stopped} reruns failed and are not "
                     f"counted (trial {first.number}: {first.error})")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "top_k": self.top_k, "n_stopped": self.n_stopped,
                "n_stable": self.n_stable, "n_lost": self.n_lost,
                "reruns": [{f: getattr(r, f) for f in r.__slots__} for r in self.reruns]}


def rerun_tasks(study: optuna.Study, spec: SweepSpec | None = None) -> list[TrialTask]:
    """A full-budget, no-stop task for every trial of ``study`` PRUNED as exploded."""
    from optuna.trial import TrialState

    spec = spec if spec is not None else _study_spec(study)
    tasks = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        if trial.user_attrs.get(keys.OUTCOME) != Outcome.EXPLODED:
            continue
        config = trial.user_attrs.get(keys.CONFIG)
        if config is None:  # not run by stabsweep: rebuild from the params
            from sweeps.spec import config_from_params

            built, workload_args = config_from_params(trial.params, spec)
            config = built.to_dict()
        else:
            workload_args = trial.user_attrs.get(keys.WORKLOAD_ARGS, dict(spec.workload.args))
        tasks.append(TrialTask(
            study_name=study.study_name, trial_number=trial.number, trial_id=trial._trial_id,
            config=dict(config), workload=spec.workload.name, workload_args=dict(workload_args),
            steps=spec.steps, eval_every=spec.eval_every, report_every=spec.report_every,
            seed=spec.seed, metric=spec.objective.metric, direction=spec.objective.direction,
            detector=dict(spec.detector), storage=None, tracking=None,
            stop_on_explosion=False))
    return tasks


def explosion_regret(study: optuna.Study, spec: SweepSpec | None = None, *, top_k: int = 3,
                     device: str = "cpu", threads: int | None = 1,
                     map_tasks: TaskMapper | None = None) -> RegretReport:
    """Rerun every trial ``study`` pruned as exploded to its end; say which would have ended
    stable and within the study's ``top_k`` completed values.

    ``spec`` defaults to the one the sweep stored in the study (``stabsweep.spec``).
    ``threads``: torch threads for in-process reruns (1, as a 1-CPU worker ran them; restored
    afterwards; None leaves torch's setting alone). ``map_tasks`` runs the reruns elsewhere.
    """
    from optuna.trial import TrialState

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1; got {top_k!r}.")
    spec = spec if spec is not None else _study_spec(study)
    minimize = spec.objective.direction == "minimize"
    completed = sorted((float(t.value) for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)), reverse=not minimize)
    tasks = rerun_tasks(study, spec)
    outcomes = (list(map_tasks(rerun_trial, tasks)) if map_tasks is not None
                else _run_here(tasks, device, threads))
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    reruns = []
    for task, outcome in zip(tasks, outcomes, strict=True):
        original = by_number[task.trial_number]
        value = outcome.value
        stable = (outcome.error is None and outcome.steps_run >= spec.steps
                  and math.isfinite(value) and math.isfinite(outcome.loss_last)
                  and outcome.loss_last < outcome.loss_first)
        rank = None
        if stable:
            better = sum(1 for v in completed if (v < value if minimize else v > value))
            rank = better + 1
        reruns.append(Rerun(
            number=task.trial_number,
            stopped_at=int(original.user_attrs.get(keys.STEPS_RUN, 0) or 0),
            onset_step=original.user_attrs.get(keys.ONSET_STEP),
            rerun_steps=outcome.steps_run,
            rerun_value=None if outcome.error is not None else float(value),
            loss_first=outcome.loss_first, loss_last=outcome.loss_last,
            verdict_step=outcome.verdict_step,
            stable=stable, rank=rank, top_k=rank is not None and rank <= top_k,
            error=outcome.error))
    report = RegretReport(study=study.study_name, top_k=top_k,
                          direction=spec.objective.direction, completed=completed,
                          reruns=reruns)
    if reruns and len(report.failed) == len(reruns):
        first = report.failed[0]
        raise RegretError(f"every rerun failed, so nothing is known about the pruning; trial "
                          f"{first.number}: {first.error}. Fix the workload (it must import "
                          "and build where the reruns run) and run it again.")
    return report


def rerun_trial(task: TrialTask, device: str = "cpu") -> RerunOutcome:
    """Train ``task`` to its last step, recording (not acting on) the detector's verdict."""
    import numpy as np

    from stability.config import StabilityConfig
    from stability.detectors import VerdictRecorder, detector_for
    from stability.trainer import train

    try:
        config = StabilityConfig.from_dict(task.config)
        recorder = VerdictRecorder(detector_for(config, task.detector))
        result = train(task.workload, config, steps=task.steps, eval_every=task.eval_every,
                       report_every=task.report_every, detector=recorder, seed=task.seed,
                       device=device, workload_args=task.workload_args)
    except Exception as exc:  # the workload raised: not stable, never ranked
        return RerunOutcome(task.trial_number, 0, math.nan, None, math.nan, math.nan,
                            error=f"{type(exc).__name__}: {exc}")
    loss = result.trace["loss"].to_numpy(dtype=np.float64)
    window = max(1, min(task.report_every, len(loss)))

    def med(values: Any) -> float:
        return float(np.median(values)) if len(values) else math.nan

    return RerunOutcome(
        trial_number=task.trial_number, steps_run=result.steps_run,
        value=float(result.final_eval.get(task.metric, math.nan)),
        verdict_step=None if recorder.verdict is None else int(recorder.verdict.step),
        loss_first=med(loss[:window]), loss_last=med(loss[-window:]))


def _run_here(tasks: Sequence[TrialTask], device: str, threads: int | None
              ) -> list[RerunOutcome]:
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    try:
        return [rerun_trial(task, device=device) for task in tasks]
    finally:
        torch.set_num_threads(before)


def _study_spec(study: optuna.Study) -> SweepSpec:
    from sweeps.spec import parse_spec

    data = study.user_attrs.get(keys.STUDY_SPEC)
    if data is None:
        raise ValueError(f"study {study.study_name!r} has no {keys.STUDY_SPEC} attribute (not "
                         "made by stabsweep); pass its spec")
    return parse_spec(data)
