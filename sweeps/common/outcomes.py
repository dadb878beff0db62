"""How a trial ended, and what each ending means for Optuna, the console and MLflow.

An :class:`Outcome` is what the study records in ``stabsweep.outcome`` (it is a ``str``, so the
stored value is the plain word and a study written before this module reads back the same).
Each outcome carries the Optuna state the driver tells, whether it counts towards
``n_trials``, whether its params are retried, and how it is drawn: one table instead of a
mapping in every module that shows a trial.

===============  ========  ========  =======  ================================================
outcome          state     finished  retried  meaning
===============  ========  ========  =======  ================================================
complete         COMPLETE  yes       no       ran all its steps, no explosion
rescued          COMPLETE  yes       no       ran all its steps after the guard skipped updates
exploded         PRUNED    yes       no       a detector fired: stopped at once, penalised
slow             PRUNED    yes       no       Optuna's pruner stopped a stable trial
failed           FAIL      no        no       the workload raised (traceback kept)
worker_lost      FAIL      no        yes      the worker process or its node died
interrupted      FAIL      no        yes      Ctrl-C, ``stabsweep stop``, or the driver died
running          RUNNING   no        no       not ended yet (status tables only)
waiting          WAITING   no        no       queued (a retry), not started
===============  ========  ========  =======  ================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Look", "Outcome"]


@dataclass(frozen=True, slots=True)
class Look:
    """How an outcome is drawn."""

    style: str
    """rich style in the console (progress lines, ``stabsweep status``)."""
    color: str
    """hex colour of the trial's MLflow run (its dot in the runs table and charts)."""
    mlflow_status: str
    """MLflow run status: KILLED shows red, FAILED grey, FINISHED green."""


class Outcome(StrEnum):
    COMPLETE = "complete"
    RESCUED = "rescued"
    EXPLODED = "exploded"
    SLOW = "slow"
    FAILED = "failed"
    WORKER_LOST = "worker_lost"
    INTERRUPTED = "interrupted"
    RUNNING = "running"
    WAITING = "waiting"

    @property
    def state(self) -> str:
        """The Optuna ``TrialState`` name the driver tells for it."""
        return _STATE[self]

    @property
    def completed(self) -> bool:
        """Ran every step and has an objective value (COMPLETE: complete or rescued)."""
        return self.state == "COMPLETE"

    @property
    def finished(self) -> bool:
        """Counts towards ``n_trials``: the sweep chose this end (COMPLETE or PRUNED)."""
        return self.state in ("COMPLETE", "PRUNED")

    @property
    def failed(self) -> bool:
        """Ended without an answer about stability (FAIL)."""
        return self.state == "FAIL"

    @property
    def retried(self) -> bool:
        """Its params run again (up to ``max_retries``): the trial did not get to end."""
        return self in (Outcome.WORKER_LOST, Outcome.INTERRUPTED)

    @property
    def look(self) -> Look:
        return _LOOK[self]

    @classmethod
    def of_state(cls, state: str) -> Outcome:
        """The outcome a trial without a recorded one has (made outside stabsweep): a
        PRUNED trial without ``stabsweep.outcome`` was stopped by Optuna's pruner."""
        return _FROM_STATE[state]

    @classmethod
    def parse(cls, value: object) -> Outcome | None:
        """The outcome a stored attribute names, or None when it names none."""
        try:
            return cls(str(value))
        except ValueError:
            return None


_STATE = {Outcome.COMPLETE: "COMPLETE", Outcome.RESCUED: "COMPLETE", Outcome.EXPLODED: "PRUNED",
          Outcome.SLOW: "PRUNED",
          Outcome.FAILED: "FAIL", Outcome.WORKER_LOST: "FAIL", Outcome.INTERRUPTED: "FAIL",
          Outcome.RUNNING: "RUNNING", Outcome.WAITING: "WAITING"}
_FROM_STATE = {"COMPLETE": Outcome.COMPLETE, "PRUNED": Outcome.SLOW, "FAIL": Outcome.FAILED,
               "RUNNING": Outcome.RUNNING, "WAITING": Outcome.WAITING}
_GREY = "#868e96"
_LOOK = {
    Outcome.COMPLETE: Look("green", "#2f9e44", "FINISHED"),
    Outcome.RESCUED: Look("blue", "#1971c2", "FINISHED"),
    Outcome.EXPLODED: Look("bold red", "#e03131", "KILLED"),
    Outcome.SLOW: Look("yellow", "#f08c00", "FINISHED"),
    Outcome.FAILED: Look("magenta", _GREY, "FAILED"),
    Outcome.WORKER_LOST: Look("magenta", _GREY, "FAILED"),
    Outcome.INTERRUPTED: Look("magenta", _GREY, "KILLED"),
    Outcome.RUNNING: Look("cyan", _GREY, "RUNNING"),
    Outcome.WAITING: Look("dim", _GREY, "SCHEDULED"),
}
