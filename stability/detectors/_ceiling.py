"""An absolute ceiling on the global gradient norm."""

from __future__ import annotations

import math

from stability.detectors._base import Detector, _LayerBaseline, _number
from stability.records import StepRecord, Verdict


class CeilingDetector(Detector):
    """The global gradient norm above an absolute ceiling."""

    kind = "ceiling"

    def __init__(self, max_norm: float = 1e4) -> None:
        self.max_norm = _number(self, "max_norm", max_norm, above=0)
        self._baseline = _LayerBaseline()

    def reset(self) -> None:
        self._baseline.clear()

    def observe(self, step: int, stats: StepRecord) -> Verdict | None:
        norm = stats.global_norm
        if not math.isfinite(norm):
            return None
        if norm <= self.max_norm:
            self._baseline.push(stats)
            return None
        return self._verdict(step, norm, self.max_norm, self._baseline.first_to_cross(stats),
                             f"global grad norm {norm:.4g} above the ceiling {self.max_norm:.4g}")
