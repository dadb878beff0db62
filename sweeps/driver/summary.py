"""What a sweep run did, in numbers: trials by outcome, the best stable trial, the compute its
finished trials ran against what they would have run without pruning."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeps.common import Outcome, keys
from sweeps.results import outcome_of, steps_accounting

__all__ = ["SweepSummary", "summarize"]


@dataclass
class SweepSummary:
    study: str
    storage: str
    n_trials: int
    """finished (complete or pruned) trials in the study."""
    counts: dict[str, int]
    """trials by outcome."""
    best: dict[str, Any] | None
    """the best complete trial: number, value, params."""
    steps_run: int
    steps_budget: int
    wall_time_s: float
    mlflow_url: str | None = None
    trials_this_run: int = 0
    rescued_skipped: int = 0
    """updates the guard skipped in the rescued trials: what rescuing them cost."""

    @property
    def steps_saved(self) -> float:
        return 1.0 - self.steps_run / self.steps_budget if self.steps_budget else 0.0

    def count(self, *outcomes: Outcome) -> int:
        return sum(self.counts.get(o, 0) for o in outcomes)


def summarize(study: optuna.Study, *, steps: int, storage: str, started: float,
              mlflow_url: str | None = None, trials_this_run: int = 0) -> SweepSummary:
    """The summary of ``study`` (``steps`` per trial), a run that began at ``started``
    (``time.perf_counter()``)."""
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    run = budget = finished = rescued_skipped = 0
    for t in trials:
        outcome = outcome_of(t)
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome == Outcome.RESCUED:
            rescued_skipped += int(t.user_attrs.get(keys.SKIPPED) or 0)
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        finished += t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        ran, spent = steps_accounting(t.state.name, t.user_attrs.get(keys.STEPS_RUN), steps)
        run, budget = run + ran, budget + spent
    best = None
    if any(t.state == TrialState.COMPLETE for t in trials):
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": b.params}
    return SweepSummary(
        study=study.study_name, storage=storage, n_trials=finished, counts=counts, best=best,
        steps_run=run, steps_budget=budget, wall_time_s=time.perf_counter() - started,
        mlflow_url=mlflow_url, trials_this_run=trials_this_run,
        rescued_skipped=rescued_skipped)
