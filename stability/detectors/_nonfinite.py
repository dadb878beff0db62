"""Non-finite losses and gradients, and fp16 overflow streaks."""

from __future__ import annotations

import math

from stability.detectors._base import Detector, checked_number, first_nonfinite_layer
from stability.records import StepRecord, Verdict


class NonFiniteDetector(Detector):
    """A non-finite loss or gradient is an explosion, except an fp16 step the scaler skipped.

    An overflowed step (``stats.overflow``: the *scaled* gradients overflowed) is expected
    under dynamic loss scaling and only counted; ``max_overflow_streak`` overflowed steps in a
    row mean the scale cannot recover (the values themselves are out of range) and give an
    ``overflow_streak`` verdict. Each overflow halves the scale, so the streak is how far the
    scale had to fall: 32 allows a loss 2^20 above what the initial scale of 2^16 suits (a
    sum-reduced or statically scaled loss backs off 20-30 times at its first steps). A
    non-finite *loss* is a verdict even on an overflowed step: the forward pass itself
    overflowed, which no loss scale can undo.
    A ``nonfinite`` verdict's value is the number of non-finite gradient tensors (at least 1,
    for a non-finite loss alone) against a threshold of 0.

    With ``stop_on_grads=False`` (``on_spike: skip``) only a non-finite loss is a verdict: a
    step whose gradients alone are non-finite was skipped on device, and counts towards the
    unsettled rule instead.
    """

    kind = "nonfinite"

    def __init__(self, max_overflow_streak: int = 32, stop_on_grads: bool = True) -> None:
        self.max_overflow_streak = checked_number(self, "max_overflow_streak", max_overflow_streak,
                                           integer=True, minimum=1)
        self.stop_on_grads = bool(stop_on_grads)
        self._streak = 0

    def reset(self) -> None:
        self._streak = 0

    def observe(self, step: int, stats: StepRecord) -> Verdict | None:
        loss_ok = math.isfinite(stats.loss)
        if stats.overflow and loss_ok:
            self._streak += 1
            if self._streak < self.max_overflow_streak:
                return None
            return self._verdict(
                step, self._streak, self.max_overflow_streak, first_nonfinite_layer(stats),
                f"{self._streak} fp16 overflow steps in a row (limit "
                f"{self.max_overflow_streak}): loss scaling cannot bring the gradients back "
                "into range", kind="overflow_streak")
        self._streak = 0
        grads_ok = math.isfinite(stats.global_norm) and stats.nonfinite <= 0
        if loss_ok and (grads_ok or not self.stop_on_grads):
            return None
        layer = first_nonfinite_layer(stats)
        what = [] if loss_ok else [f"loss {stats.loss}"]
        if stats.nonfinite > 0 or not math.isfinite(stats.global_norm):
            what.append(f"{stats.nonfinite} gradient tensor(s) non-finite, global norm "
                        f"{stats.global_norm}")
        where = f", first layer {layer}" if layer else ""
        return self._verdict(step, max(stats.nonfinite, 1), 0.0, layer,
                             "; ".join(what) + where)
