"""A detector that watches without acting: it keeps the first verdict of the detector it wraps
and hides every verdict from the guard, so training runs to its last step. Used to run a loop
"without explosion pruning" while still learning when a detector would have fired."""

from __future__ import annotations

from typing import Any

from stability.detectors._base import Detector
from stability.records import StepRecord, Verdict


class VerdictRecorder(Detector):
    def __init__(self, inner: Detector) -> None:
        self.inner = inner
        self.verdict: Verdict | None = None
        """the wrapped detector's first verdict (None: it never fired)."""

    def __getattr__(self, name: str) -> Any:
        # what the guard reads of its detector (skip policy, thresholds) is the inner one's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def name(self) -> str:
        return self.inner.name

    def reset(self) -> None:
        self.inner.reset()
        self.verdict = None

    def observe(self, step: int, stats: StepRecord) -> Verdict | None:
        verdict = self.inner.observe(step, stats)
        if self.verdict is None:
            self.verdict = verdict
        return None
