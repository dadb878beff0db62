"""Turning how a trial ended into what Optuna records: user attributes, the state, and the
penalty that teaches the sampler to avoid an explosion.

* complete: COMPLETE with the objective value.
* exploded: PRUNED after a penalty intermediate value that ranks it below every stable trial,
  so TPE learns to avoid the region (TPE ignores FAIL trials, so a FAIL would teach nothing).
  The verdict, onset step and first layer are user attributes.
* slow: PRUNED, Optuna's own pruner stopped a stable trial.
* failed: FAIL, the workload raised (traceback kept, not retried).
* worker_lost / interrupted: FAIL with the steps the worker last said it ran; the driver
  retries the params.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeps.common import Outcome, keys
from sweeps.worker import PENALTY, TrialOutcome

__all__ = ["tell_lost", "tell_outcome"]


def tell_outcome(study: optuna.Study, trial: optuna.Trial, result: TrialOutcome) -> Outcome:
    """Record a trial its worker ran to an end; return its outcome."""
    outcome = Outcome(result.outcome)
    for key, value in result.user_attrs().items():
        trial.set_user_attr(key, value)
    if not result.reported_by_worker:
        for step, value in result.intermediate:
            if math.isfinite(value):
                trial.report(value, step)
    if outcome is Outcome.EXPLODED:
        last = max((step for step, _ in result.intermediate), default=-1)
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
        trial.report(sign * PENALTY, max(result.steps_run, last + 1))
    value = result.value if outcome.completed else None
    study.tell(trial, value, state=TrialState[outcome.state], skip_if_finished=True)
    return outcome


def tell_lost(study: optuna.Study, trial: optuna.Trial, outcome: Outcome, reason: str, *,
              steps_run: int, wall_time_s: float) -> None:
    """Record a trial whose worker is gone (lost, or interrupted) as FAIL with why, and the
    steps it had run by the worker's last word."""
    attrs: dict[str, Any] = {keys.OUTCOME: outcome, keys.REASON: reason,
                             keys.STEPS_RUN: steps_run, keys.WALL_TIME: round(wall_time_s, 3)}
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    study.tell(trial, None, state=TrialState[outcome.state], skip_if_finished=True)
