"""The loss diverging: far above its best smoothed value, or far above its initial value."""

from __future__ import annotations

import math

from stability.detectors._base import Detector, _number
from stability.records import StepRecord, Verdict


class LossDivergenceDetector(Detector):
    """The loss above ``factor`` x a reference: the best smoothed loss, floored by the start.

    The reference is the best (lowest) EMA of the loss so far (``smoothing``; the minimum of
    raw mini-batch losses would be a lucky batch), but never below ``floor`` x the first loss
    seen: a loss that trained down towards zero makes "10x the best" a normal mini-batch, while
    a loss ``factor * floor`` times its initial value is a broken model whatever the best was.
    From the first step (``warmup`` 0) the reference is the first loss itself, so a first
    update that throws the loss ``factor`` x above its start is caught at once. ``patience``
    raw losses in a row above the limit give the verdict. For a non-positive reference the
    limit is ``ref + (factor - 1) * |ref|`` (and the floor does not apply).
    """

    kind = "loss_divergence"

    def __init__(self, factor: float = 10.0, warmup: int = 0, patience: int = 1,
                 smoothing: float = 0.98, floor: float = 0.5) -> None:
        self.factor = _number(self.name, "factor", factor, 10.0, above=1.0)
        self.warmup = _number(self.name, "warmup", warmup, 0, integer=True, minimum=0)
        self.patience = _number(self.name, "patience", patience, 1, integer=True, minimum=1)
        self.smoothing = _number(self.name, "smoothing", smoothing, 0.98, minimum=0.0,
                                 below=1.0)
        self.floor = _number(self.name, "floor", floor, 0.5, minimum=0.0)
        self.reset()

    def reset(self) -> None:
        self._n = 0
        self._first = math.nan
        self._ema = math.nan
        self._best = math.inf
        self._streak = 0

    def observe(self, step: int, stats: StepRecord) -> Verdict | None:
        loss = stats.loss
        if not math.isfinite(loss):
            return None
        self._n += 1
        verdict = None
        if self._n == 1:
            self._first = loss
        elif self._n > self.warmup:
            ref = self._best
            if self._first > 0:
                ref = max(ref, self.floor * self._first)
            limit = ref + (self.factor - 1.0) * abs(ref)
            if loss > limit:
                self._streak += 1
                if self._streak >= self.patience:
                    verdict = self._verdict(
                        step, loss, limit, None,
                        f"loss {loss:.4g} above {self.factor:g}x its reference {ref:.4g} "
                        f"(best smoothed loss {self._best:.4g}, first loss "
                        f"{self._first:.4g}) for {self._streak} step(s) in a row")
            else:
                self._streak = 0
        a = self.smoothing
        self._ema = loss if self._n == 1 else a * self._ema + (1.0 - a) * loss
        self._best = min(self._best, self._ema)
        return verdict
