"""The loss diverging: far above its first value, or far above its best and its progress lost."""

from __future__ import annotations

import math

from stability.detectors._base import Detector, checked_number
from stability.records import StepRecord, Verdict


class LossDivergenceDetector(Detector):
    """The loss far above where training started, or back up after the progress it made.

    Two rules, checked on every finite loss:

    - *from the start*: ``initial_patience`` losses in a row above ``initial_factor`` x the
      first loss seen give the verdict (from the second step on): the model is worse than at
      initialisation. With 1 (``on_spike: stop``) the first such loss stops the run; a longer
      window (``on_spike: skip``) lets a spike that comes back within it train on.
      ``None`` turns this rule off.
    - *from the best*: after ``warmup`` steps, ``patience`` raw losses in a row above both
      ``factor`` x the best (lowest) EMA of the loss (``smoothing``) and the best plus
      ``regress`` x the progress made since the start (first EMA - best). A loss trained
      towards zero that bumps from 1e-4 to 1e-2 has lost 1 % of its progress, not diverged.

    Both rules are ratios of the loss to itself, so a loss multiplied by any constant (a
    static loss scale, a ``sum`` reduction) gets the same verdicts. With ``ignore_skipped``
    (``on_spike: skip``), steps whose update the guard dropped are not looked at: their loss
    is the bad batch's, and the weights did not move. Losses are expected to be >= 0.
    """

    kind = "loss_divergence"

    def __init__(self, factor: float = 10.0, warmup: int = 0, patience: int = 3,
                 smoothing: float = 0.98, initial_factor: float | None = 10.0,
                 regress: float = 1.0, ignore_skipped: bool = False,
                 initial_patience: int = 1) -> None:
        self.factor = checked_number(self, "factor", factor, above=1.0)
        self.warmup = checked_number(self, "warmup", warmup, integer=True, minimum=0)
        self.patience = checked_number(self, "patience", patience, integer=True, minimum=1)
        self.smoothing = checked_number(self, "smoothing", smoothing, minimum=0.0, below=1.0)
        self.initial_factor = (None if initial_factor is None else
                               checked_number(self, "initial_factor", initial_factor, above=1.0))
        self.regress = checked_number(self, "regress", regress, minimum=0.0)
        self.ignore_skipped = bool(ignore_skipped)
        self.initial_patience = checked_number(self, "initial_patience", initial_patience,
                                               integer=True, minimum=1)
        self.reset()

    def reset(self) -> None:
        self._n = 0
        self._first = math.nan
        self._ema = math.nan
        self._start = math.nan  # the EMA at the first step: where the progress is measured from
        self._best = math.inf
        self._streak = 0
        self._initial_streak = 0

    @staticmethod
    def _limit(ref: float, factor: float) -> float:
        return ref + (factor - 1.0) * abs(ref)

    def observe(self, step: int, stats: StepRecord) -> Verdict | None:
        loss = stats.loss
        if not math.isfinite(loss) or (self.ignore_skipped and stats.skipped):
            return None
        self._n += 1
        verdict = None
        if self._n == 1:
            self._first = loss
        elif self.initial_factor is not None and (
                loss > (limit := self._limit(self._first, self.initial_factor))):
            self._initial_streak += 1
            if self._initial_streak >= self.initial_patience:
                steps = (f", for {self._initial_streak} steps in a row"
                         if self.initial_patience > 1 else "")
                verdict = self._verdict(
                    step, loss, limit, None,
                    f"loss {loss:.4g} above {self.initial_factor:g}x the first loss "
                    f"{self._first:.4g}{steps}: worse than at initialisation")
        else:
            self._initial_streak = 0
        if self._n > max(1, self.warmup):
            progress = max(0.0, self._start - self._best)
            limit = max(self._limit(self._best, self.factor),
                        self._best + self.regress * progress)
            if loss > limit:
                self._streak += 1
                if self._streak >= self.patience and verdict is None:
                    verdict = self._verdict(
                        step, loss, limit, None,
                        f"loss {loss:.4g} above {self.factor:g}x the best smoothed loss "
                        f"{self._best:.4g} and {self.regress:g}x its progress from "
                        f"{self._start:.4g}, for {self._streak} steps in a row")
            else:
                self._streak = 0
        a = self.smoothing
        self._ema = loss if self._n == 1 else a * self._ema + (1.0 - a) * loss
        if self._n == 1:
            self._start = loss
        self._best = min(self._best, self._ema)
        return verdict
