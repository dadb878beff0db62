"""MLflow told what the study says: each trial's run ends with the outcome, status and steps
the Optuna storage (the source of truth) records for that trial.

Two processes write a trial's run: its worker (the end it saw) and the driver (the end it
told Optuna). They can disagree: a worker that trained on after Ctrl-C ended its run
"complete" while the study recorded it interrupted; an end spooled by a worker killed -9 lands
after the driver closed the run. The driver calls :func:`make_tracking_agree` last, once every
spool has landed, at the end of a sweep and after Ctrl-C.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from sweeps.common import keys
from sweeps.driver.events import EventHandler, SweepWarning

__all__ = ["expected_runs", "live_runs", "make_tracking_agree"]

_ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def expected_runs(study: optuna.Study) -> dict[str, tuple[str, int | None, str]]:
    """Run id -> (outcome, steps run, reason) of every ended trial that has a run."""
    out: dict[str, tuple[str, int | None, str]] = {}
    for trial in study.get_trials(deepcopy=False, states=_ENDED):
        attrs = trial.user_attrs
        run_id, outcome = attrs.get(keys.MLFLOW_RUN), attrs.get(keys.OUTCOME)
        if not run_id or not outcome:
            continue
        steps = attrs.get(keys.STEPS_RUN)
        out[str(run_id)] = (str(outcome), None if steps is None else int(steps),
                            str(attrs.get(keys.REASON) or ""))
    return out


def live_runs(study: optuna.Study) -> list[str]:
    """The runs of trials still running (on a database server: another driver's)."""
    return [str(t.user_attrs[keys.MLFLOW_RUN]) for t in study.get_trials(
        deepcopy=False, states=(TrialState.RUNNING,)) if t.user_attrs.get(keys.MLFLOW_RUN)]


def make_tracking_agree(study: optuna.Study, tracker: Any, emit: EventHandler, *,
                        shared: bool = False) -> int:
    """Correct the runs that disagree with the study; how many were corrected. A run left
    RUNNING that no trial records (the driver stopped between creating it and recording it)
    is ended too, except on a database server (``shared``), where another driver may be
    between those two steps now. The store being unreachable is a warning: the study stays
    right, the runs are fixed next time."""
    if not tracker.enabled:
        return 0
    try:
        return int(tracker.reconcile(expected_runs(study),
                                     None if shared else live_runs(study)))
    except Exception as exc:
        emit(SweepWarning(f"could not check the MLflow runs against the study "
                          f"({type(exc).__name__}: {str(exc)[:200]}); a later run or "
                          "`stabsweep sync` leaves them as they are"))
        return 0
