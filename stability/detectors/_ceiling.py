"""A ceiling on the global gradient norm, relative to the run's own early baseline."""

from __future__ import annotations

import math
import statistics

from stability.detectors._base import Detector, LayerBaseline, checked_number
from stability.records import StepRecord, Verdict


class CeilingDetector(Detector):
    """The global norm above ``ratio`` x the run's baseline: the median of its first
    ``baseline`` finite norms.

    Relative, never absolute: an absolute ceiling flags at step 0 a model whose gradients are
    simply large (a static loss scale, ``reduction="sum"`` over a big batch, a wide model) and
    misses an explosion of one whose gradients are small. Until the baseline exists the
    detector is silent (only non-finite values stop a run that early).
    """

    kind = "ceiling"

    def __init__(self, ratio: float = 1e4, baseline: int = 8) -> None:
        self.ratio = checked_number(self, "ratio", ratio, above=1.0)
        self.baseline = checked_number(self, "baseline", baseline, integer=True, minimum=1)
        self._layers = LayerBaseline()
        self.reset()

    def reset(self) -> None:
        self._first: list[float] = []
        self._limit = math.inf
        self._layers.clear()

    def observe(self, step: int, stats: StepRecord) -> Verdict | None:
        norm = stats.global_norm
        if not (norm > 0.0 and math.isfinite(norm)):
            return None
        if len(self._first) < self.baseline:
            self._first.append(norm)
            self._layers.push(stats)
            if len(self._first) == self.baseline:
                self._limit = self.ratio * statistics.median(self._first)
            return None
        if norm <= self._limit:
            self._layers.push(stats)
            return None
        base = self._limit / self.ratio
        return self._verdict(step, norm, self._limit, self._layers.first_to_cross(stats),
                             f"global grad norm {norm:.4g} is {norm / base:.3g}x the run's "
                             f"early baseline {base:.4g} (limit {self.ratio:g}x)")
