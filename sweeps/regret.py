"""Regret of explosion pruning: would a trial stopped as exploded have ended well?

Explosion pruning saves steps only if it stops trials that would have ended badly. The check:
rerun every trial of a finished study that was PRUNED as ``exploded`` to its full step budget,
with the same params, workload arguments and seed, and with explosion stopping off (the
verdict is still recorded; a non-finite loss or gradient still ends the run, as it ends any
run, see ``stop_on_explosion`` in :mod:`sweeps.spec`). A rerun that ran every step and ended
with a finite objective is *stable*; a stable rerun whose value would rank among the study's
``top_k`` completed values is a trial the pruning *lost*.

    from sweeps.regret import explosion_regret
    report = explosion_regret(study)          # the spec is read from the study's attributes
    print(report.summary())                   # "12 stopped as exploded: 1 would have ended ..."

Reruns run in this process (one after another) unless ``map_tasks`` is given, e.g. a function
that sends the :class:`~sweeps.objective.TrialTask` list to Ray workers and returns their
:class:`~sweeps.objective.TrialOutcome` list in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweeps import keys
from sweeps.objective import TrialOutcome, TrialTask, run_trial

if TYPE_CHECKING:
    import optuna

    from sweeps.spec import SweepSpec

__all__ = ["RegretReport", "Rerun", "explosion_regret", "rerun_tasks"]

TaskMapper = Callable[[Sequence[TrialTask]], Sequence[TrialOutcome]]


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
    rerun_outcome: str
    """the rerun's outcome: complete, exploded (non-finite, or a non-finite objective), failed."""
    verdict_step: int | None
    """step at which the detector fired again in the rerun (None: it did not)."""
    stable: bool
    """the rerun ran every step and ended with a finite objective."""
    rank: int | None
    """1-based rank of the rerun's value among the study's completed values (stable only)."""
    top_k: bool
    """stable and ranked within the report's ``top_k``: a good trial the pruning lost."""


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

    def summary(self) -> str:
        lost = [r.number for r in self.reruns if r.top_k]
        return (f"{self.study}: {self.n_stopped} trials stopped as exploded; rerun to the end, "
                f"{self.n_stable} ended stable and {self.n_lost} would rank in the top "
                f"{self.top_k}" + (f" (trials {', '.join(map(str, lost))})" if lost else ""))

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
        if trial.user_attrs.get(keys.OUTCOME) != keys.EXPLODED:
            continue
        config = trial.user_attrs.get(keys.CONFIG)
        if config is None:  # not run by stabsweep: rebuild from the params
            from sweeps.space import config_from_params

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
    outcomes = list(map_tasks(tasks)) if map_tasks is not None else _run_here(
        tasks, device, threads)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    reruns = []
    for task, outcome in zip(tasks, outcomes, strict=True):
        original = by_number[task.trial_number]
        value = outcome.value
        stable = (outcome.outcome == keys.COMPLETE and outcome.steps_run >= spec.steps
                  and value is not None and math.isfinite(value))
        rank = None
        if stable:
            better = sum(1 for v in completed if (v < value if minimize else v > value))
            rank = better + 1
        verdict = outcome.verdict or {}
        reruns.append(Rerun(
            number=task.trial_number,
            stopped_at=int(original.user_attrs.get(keys.STEPS_RUN, 0) or 0),
            onset_step=original.user_attrs.get(keys.ONSET_STEP),
            rerun_steps=outcome.steps_run, rerun_value=None if value is None else float(value),
            rerun_outcome=outcome.outcome, verdict_step=verdict.get("step"),
            stable=stable, rank=rank, top_k=rank is not None and rank <= top_k))
    return RegretReport(study=study.study_name, top_k=top_k,
                        direction=spec.objective.direction, completed=completed,
                        reruns=reruns)


def _run_here(tasks: Sequence[TrialTask], device: str, threads: int | None
              ) -> list[TrialOutcome]:
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    try:
        return [run_trial(task, device=device) for task in tasks]
    finally:
        torch.set_num_threads(before)


def _study_spec(study: optuna.Study) -> SweepSpec:
    from sweeps.spec import parse_spec

    data = study.user_attrs.get(keys.STUDY_SPEC)
    if data is None:
        raise ValueError(f"study {study.study_name!r} has no {keys.STUDY_SPEC} attribute (not "
                         "made by stabsweep); pass its spec")
    return parse_spec(data)
