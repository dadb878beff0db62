"""The sweep driver: :func:`run_sweep` opens (or resumes) a study, checks what it can before
writing anything (``preflight``), dispatches trials to Ray workers and tells Optuna how each
ended (``dispatch``, ``tell``), reports typed ``events`` while it runs, and closes with a
``summary`` and the study's ``artifacts``. ``_reaper`` takes its Ray processes down with it.

Names load on first use: ``from sweeps.driver import RunOptions`` does not import Ray or Optuna
(the CLI starts fast); :func:`run_sweep` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sweeps.common import lazy_exports

if TYPE_CHECKING:
    from sweeps.driver.events import (
        AlreadyDone,
        EventHandler,
        StorageServed,
        SweepEvent,
        SweepStarted,
        SweepWarning,
        TrialDispatched,
        TrialEnded,
        TrialRecovered,
    )
    from sweeps.driver.options import RunOptions
    from sweeps.driver.preflight import missing_factory
    from sweeps.driver.runner import run_sweep
    from sweeps.driver.summary import SweepSummary

_WHERE = {
    "AlreadyDone": "sweeps.driver.events",
    "EventHandler": "sweeps.driver.events",
    "StorageServed": "sweeps.driver.events",
    "SweepEvent": "sweeps.driver.events",
    "SweepStarted": "sweeps.driver.events",
    "SweepWarning": "sweeps.driver.events",
    "TrialDispatched": "sweeps.driver.events",
    "TrialEnded": "sweeps.driver.events",
    "TrialRecovered": "sweeps.driver.events",
    "RunOptions": "sweeps.driver.options",
    "missing_factory": "sweeps.driver.preflight",
    "run_sweep": "sweeps.driver.runner",
    "SweepSummary": "sweeps.driver.summary",
}

__all__ = [
    "AlreadyDone",
    "EventHandler",
    "RunOptions",
    "StorageServed",
    "SweepEvent",
    "SweepStarted",
    "SweepSummary",
    "SweepWarning",
    "TrialDispatched",
    "TrialEnded",
    "TrialRecovered",
    "missing_factory",
    "run_sweep",
]

__getattr__ = lazy_exports(__name__, _WHERE)
