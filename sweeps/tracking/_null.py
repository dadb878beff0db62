"""The tracker of a sweep run without MLflow (``tracking=False``): the driver calls it exactly
as it calls a :class:`~sweeps.tracking.StudyTracker`, and nothing is logged."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["NullTracker"]


class NullTracker:
    enabled = False
    parent_run_id: str | None = None

    def create_trial_run(self, trial_number: int, params: Mapping[str, Any],
                         attempt: int = 1) -> None:
        return None

    def settings_for(self, run_id: str | None) -> None:
        return None

    def close_trial_run(self, run_id: str | None, outcome: str, reason: str,
                        steps: int | None = None) -> None:
        return None

    def sync(self, prune: bool = False) -> None:
        return None

    def reconcile(self, expected: Mapping[str, tuple[str, int | None, str]],
                  live: Iterable[str] | None = None) -> int:
        return 0

    def orphan_command(self) -> None:
        return None

    def ui_url(self, base_url: str | None = None) -> None:
        return None

    def finish_study(self, files: Mapping[str, str | Path], summary: Mapping[str, Any]) -> None:
        return None

    def close(self, status: str = "KILLED") -> None:
        return None
