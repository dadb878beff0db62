"""What the driver tells its caller while a sweep runs: one small record per event.

:func:`sweeps.driver.runner.run_sweep` calls ``on_event(event)`` with these; the CLI's live display
(:class:`sweeps.cli.progress.SweepDisplay`) draws them, a test or notebook may collect them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sweeps.common import Outcome

__all__ = ["AlreadyDone", "EventHandler", "StorageServed", "SweepEvent", "SweepStarted",
           "SweepWarning", "TrialDispatched", "TrialEnded", "TrialRecovered"]


@dataclass(frozen=True, slots=True)
class SweepStarted:
    study: str
    workers: int
    storage: str
    """the storage URL, credentials redacted."""
    finished: int
    """finished trials the study had already."""
    n_trials: int


@dataclass(frozen=True, slots=True)
class StorageServed:
    """The SQLite study is served to remote workers (gRPC storage proxy) on host:port."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class AlreadyDone:
    finished: int
    n_trials: int


@dataclass(frozen=True, slots=True)
class TrialRecovered:
    """A trial left running by a stopped driver was closed as interrupted; its params rerun."""

    trial: int


@dataclass(frozen=True, slots=True)
class TrialDispatched:
    trial: int
    params: dict[str, Any]
    attempt: int


@dataclass(frozen=True, slots=True)
class TrialEnded:
    trial: int
    outcome: Outcome
    value: float | None
    """the objective value (complete trials; a slow trial's last reported value)."""
    reason: str
    steps_run: int
    params: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    best: float | None = None
    """the study's best value after this trial."""
    skipped: int = 0
    """updates the guard dropped and trained on past (a spike, a non-finite step)."""


@dataclass(frozen=True, slots=True)
class SweepWarning:
    message: str


SweepEvent = (SweepStarted | StorageServed | AlreadyDone | TrialRecovered | TrialDispatched
              | TrialEnded | SweepWarning)
EventHandler = Callable[[SweepEvent], None]
