"""The global norm over the running median of a window of norms."""

from __future__ import annotations

import bisect
import math
from collections import deque

from stability.detectors._base import Detector, LayerBaseline, checked_number
from stability.records import StepRecord, Verdict


class MedianRatioDetector(Detector):
    """The global norm over the median of the previous ``window`` norms.

    The median ignores earlier spikes, so it catches a jump that a variance inflated by a
    noisy warm-up would hide. ``patience`` steps in a row above ``ratio`` x median give the
    verdict; no verdict before ``warmup`` norms have been seen.
    """

    kind = "median_ratio"

    def __init__(self, window: int = 64, ratio: float = 20.0, patience: int = 3,
                 warmup: int = 32) -> None:
        self.window = checked_number(self, "window", window, integer=True, minimum=3)
        self.ratio = checked_number(self, "ratio", ratio, above=1.0)
        self.patience = checked_number(self, "patience", patience, integer=True, minimum=1)
        self.warmup = checked_number(self, "warmup", warmup, integer=True, minimum=1)
        self._baseline = LayerBaseline()
        self.reset()

    def reset(self) -> None:
        self._fifo: deque[float] = deque()
        self._sorted: list[float] = []
        self._seen = 0
        self._streak = 0
        self._streak_start = 0.0
        self._baseline.clear()

    def _median(self) -> float:
        s, n = self._sorted, len(self._sorted)
        return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])

    def observe(self, step: int, stats: StepRecord) -> Verdict | None:
        norm = stats.global_norm
        if not (norm > 0.0 and math.isfinite(norm)):
            return None
        verdict = None
        if self._seen >= self.warmup:
            median = self._median()
            if norm > self.ratio * median:
                self._streak += 1
                if self._streak == 1:
                    self._streak_start = norm
                if self._streak >= self.patience and norm >= self._streak_start:
                    verdict = self._verdict(
                        step, norm, self.ratio * median, self._baseline.first_to_cross(stats),
                        f"global grad norm {norm:.4g} is {norm / median:.3g}x the median "
                        f"{median:.4g} of the last {len(self._sorted)} steps for "
                        f"{self._streak} steps in a row (limit {self.ratio:g}x)")
            else:
                self._streak = 0
                self._baseline.push(stats)
        else:
            self._baseline.push(stats)
        self._seen += 1
        if len(self._fifo) == self.window:
            old = self._fifo.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._fifo.append(norm)
        bisect.insort(self._sorted, norm)
        return verdict
