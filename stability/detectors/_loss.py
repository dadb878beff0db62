"""The loss diverging: far above its first value, or far above its best smoothed value."""

from __future__ import annotations

import math

from stability.detectors._base import Detector, _number
from stability.records import StepRecord, Verdict


class LossDivergenceDetector(Detector):
    """The loss far above where training started, or far above the best it reached.

    Two rules, checked on every finite loss:

    - *from the start*: a loss above ``initial_factor`` x the first loss seen gives the
      verdict at once, from the second step on: the model is worse than at initialisation,
      which catches a first update that throws the loss up before any statistic has warmed
      up. ``None`` turns this rule off.
    - *from the best*: after ``warmup`` steps, ``patience`` raw losses in a row above
      ``factor`` x the best (lowest) EMA of the loss so far (``smoothing``; the minimum of raw
      mini-batch losses would be a lucky batch). Patience, because a loss that trained down
      towards zero makes single batches at 10x the best common.

    Losses are expected to be >= 0; for a reference <= 0 the limit is
    ``ref + (factor - 1) * |ref|``.
    """

    kind = "loss_divergence"

    def __init__(self, factor: float = 10.0, warmup: int = 0, patience: int = 3,
                 smoothing: float = 0.98, initial_factor: float | None = 10.0) -> None:
        self.factor = _number(self, "factor", factor, above=1.0)
        self.warmup = _number(self, "warmup", warmup, integer=True, minimum=0)
        self.patience = _number(self, "patience", patience, integer=True, minimum=1)
        self.smoothing = _number(self, "smoothing", smoothing, minimum=0.0, below=1.0)
        self.initial_factor = (None if initial_factor is None else
                               _number(self, "initial_factor", initial_factor, above=1.0))
        self.reset()

    def reset(self) -> None:
        self._n = 0
        self._first = math.nan
        self._ema = math.nan
        self._best = math.inf
        self._streak = 0

    @staticmethod
    def _limit(ref: float, factor: float) -> float:
        return ref + (factor - 1.0) * abs(ref)

    def observe(self, step: int, stats: StepRecord) -> Verdict | None:
        loss = stats.loss
        if not math.isfinite(loss):
            return None
        self._n += 1
        verdict = None
        if self._n == 1:
            self._first = loss
        elif self.initial_factor is not None and (
                loss > (limit := self._limit(self._first, self.initial_factor))):
            verdict = self._verdict(
                step, loss, limit, None,
                f"loss {loss:.4g} above {self.initial_factor:g}x the first loss "
                f"{self._first:.4g}: worse than at initialisation")
        if self._n > max(1, self.warmup):
            limit = self._limit(self._best, self.factor)
            if loss > limit:
                self._streak += 1
                if self._streak >= self.patience and verdict is None:
                    verdict = self._verdict(
                        step, loss, limit, None,
                        f"loss {loss:.4g} above {self.factor:g}x the best smoothed loss "
                        f"{self._best:.4g} for {self._streak} steps in a row")
            else:
                self._streak = 0
        a = self.smoothing
        self._ema = loss if self._n == 1 else a * self._ema + (1.0 - a) * loss
        self._best = min(self._best, self._ema)
        return verdict
