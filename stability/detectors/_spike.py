"""A z-score of the log global norm against its EMA (ZClip-style), with patience."""

from __future__ import annotations

import math

from stability.detectors._base import Detector, LayerBaseline, checked_number
from stability.records import StepRecord, Verdict


class ZScoreSpikeDetector(Detector):
    """ZClip-style z-score of the log global norm against its EMA mean and variance.

    After ``warmup`` steps (their mean and variance seed the EMA), a step is anomalous when
    ``log(norm) - mean > max(z_threshold * std, log(min_ratio))``: the ratio floor keeps a very
    smooth trace from flagging a 10 % bump. An anomalous step updates the EMA with the clamped
    value (as ZClip does), so a lasting, moderate level shift is absorbed while an explosion
    keeps outrunning the baseline. A verdict needs ``patience`` anomalous steps in a row: a
    single spike that recovers never fires.
    """

    kind = "spike"

    def __init__(self, alpha: float = 0.97, z_threshold: float = 4.0, warmup: int = 25,
                 patience: int = 3, min_ratio: float = 5.0) -> None:
        self.alpha = checked_number(self, "alpha", alpha, above=0.0, below=1.0)
        self.z_threshold = checked_number(self, "z_threshold", z_threshold, above=0)
        self.warmup = checked_number(self, "warmup", warmup, integer=True, minimum=2)
        self.patience = checked_number(self, "patience", patience, integer=True, minimum=1)
        self.min_ratio = checked_number(self, "min_ratio", min_ratio, minimum=1.0)
        self._log_min_ratio = math.log(self.min_ratio)
        self._baseline = LayerBaseline()
        self.reset()

    def reset(self) -> None:
        self._n = 0
        self._mean = 0.0
        self._var = 0.0  # Welford M2 during warm-up, EMA variance after
        self._streak = 0
        self._streak_start = 0.0
        self._baseline.clear()

    def observe(self, step: int, stats: StepRecord) -> Verdict | None:
        norm = stats.global_norm
        if not (norm > 0.0 and math.isfinite(norm)):
            return None
        y = math.log(norm)
        if self._n < self.warmup:
            self._n += 1
            delta = y - self._mean
            self._mean += delta / self._n
            self._var += delta * (y - self._mean)
            if self._n == self.warmup:
                self._var /= self._n
            self._baseline.push(stats)
            return None
        std = math.sqrt(self._var)
        limit = max(self.z_threshold * std, self._log_min_ratio)
        dev = y - self._mean
        if dev > limit:
            self._streak += 1
            if self._streak == 1:
                self._streak_start = norm
            if self._streak >= self.patience and norm >= self._streak_start:
                mean, ceiling = math.exp(self._mean), math.exp(self._mean + limit)
                z = dev / std if std > 0 else math.inf
                return self._verdict(
                    step, norm, ceiling, self._baseline.first_to_cross(stats),
                    f"global grad norm {norm:.4g} above {ceiling:.4g} for {self._streak} "
                    f"steps in a row (z {z:.3g} over EMA mean {mean:.4g})")
            y = self._mean + limit  # clamped update, as ZClip does
        else:
            self._streak = 0
            self._baseline.push(stats)
        delta = y - self._mean
        incr = (1.0 - self.alpha) * delta
        self._mean += incr
        self._var = self.alpha * (self._var + delta * incr)
        return None
