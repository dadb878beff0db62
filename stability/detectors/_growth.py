"""Sustained exponential growth of the global norm (slope of its log)."""

from __future__ import annotations

import math
from collections import deque

from stability.detectors._base import Detector, LayerBaseline, checked_number
from stability.records import StepRecord, Verdict


class GrowthDetector(Detector):
    """Sustained exponential growth: least-squares slope of log-norm over ``window`` steps.

    A step counts as growing when the slope exceeds ``min_slope`` (per step; 0.1 is x1.105 per
    step) and both the newest norm and the fitted line at the newest step are at least
    ``min_ratio`` x the baseline, the lowest ``window``-step mean of the log-norm seen after
    ``warmup`` steps. ``patience`` growing steps in a row, the newest norm not below the one
    where the streak began, give the verdict. The baseline follows a warm-up transient down
    (norms that start high and fall never look like growth), ``warmup`` ignores the early rise
    of norms from a small initialisation, and a spike that decays is not growth.
    """

    kind = "growth"

    def __init__(self, window: int = 20, min_slope: float = 0.1, min_ratio: float = 100.0,
                 patience: int = 3, warmup: int = 32) -> None:
        self.window = checked_number(self, "window", window, integer=True, minimum=3)
        self.min_slope = checked_number(self, "min_slope", min_slope, above=0)
        self.min_ratio = checked_number(self, "min_ratio", min_ratio, minimum=1.0)
        self.patience = checked_number(self, "patience", patience, integer=True, minimum=1)
        self.warmup = checked_number(self, "warmup", warmup, integer=True, minimum=0)
        self._log_min_ratio = math.log(self.min_ratio)
        n = self.window
        self._xbar = (n - 1) / 2.0
        self._sxx = n * (n * n - 1) / 12.0
        self._baseline = LayerBaseline()
        self.reset()

    def reset(self) -> None:
        self._ys: deque[float] = deque()
        self._sy = 0.0  # sum of y over the window
        self._sxy = 0.0  # sum of x * y, x = 0 .. n-1 position in the window
        self._pushes = 0
        self._floor = math.inf  # lowest window mean of log-norm after warm-up
        self._streak = 0
        self._streak_start = 0.0
        self._baseline.clear()

    def _push(self, y: float) -> None:
        n = self.window
        if len(self._ys) == n:
            old = self._ys.popleft()
            self._sxy -= self._sy - old  # every remaining x drops by one
            self._sy -= old
        self._sxy += len(self._ys) * y
        self._sy += y
        self._ys.append(y)
        self._pushes += 1
        if self._pushes % (8 * n) == 0:  # drop rounding drift of the running sums
            self._sy = math.fsum(self._ys)
            self._sxy = math.fsum(i * v for i, v in enumerate(self._ys))

    def observe(self, step: int, stats: StepRecord) -> Verdict | None:
        norm = stats.global_norm
        if not (norm > 0.0 and math.isfinite(norm)):
            return None
        y = math.log(norm)
        self._push(y)
        if len(self._ys) < self.window or self._pushes <= self.warmup:
            self._baseline.push(stats)
            return None
        mean = self._sy / self.window
        slope = (self._sxy - self._xbar * self._sy) / self._sxx
        self._floor = min(self._floor, mean)
        fitted = mean + slope * self._xbar  # fitted log-norm at the newest step
        limit = self._floor + self._log_min_ratio
        if not (slope > self.min_slope and fitted >= limit and y >= limit):
            self._streak = 0
            self._baseline.push(stats)
            return None
        self._streak += 1
        if self._streak == 1:
            self._streak_start = norm
        if self._streak < self.patience or norm < self._streak_start:
            return None
        base = math.exp(self._floor)
        return self._verdict(
            step, slope, self.min_slope, self._baseline.first_to_cross(stats),
            f"global grad norm growing x{math.exp(slope):.3g} per step over the last "
            f"{self.window} steps (log slope {slope:.3g} > {self.min_slope:g}) for "
            f"{self._streak} steps, now {norm:.4g} = {norm / base:.3g}x its baseline {base:.4g}")
