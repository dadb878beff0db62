"""Skipped steps that do not settle: the verdict of ``on_spike: skip``."""

from __future__ import annotations

from stability.detectors._base import Detector, LayerBaseline, checked_number
from stability.records import StepRecord, Verdict


class UnsettledDetector(Detector):
    """``patience`` steps in a row whose update was skipped on device (``StepRecord.skipped``).

    Under ``on_spike: skip`` the guard drops the update of a spiking or non-finite step and
    trains on; a data fault or a bad batch passes in a step or two. When every step keeps
    spiking, the weights themselves are bad and training has stopped making progress: that is
    an explosion. fp16 overflow steps are left to the overflow-streak rule (they neither count
    nor break a streak).
    """

    kind = "unsettled"

    def __init__(self, patience: int = 10) -> None:
        self.patience = checked_number(self, "patience", patience, integer=True, minimum=1)
        self._baseline = LayerBaseline()
        self.reset()

    def reset(self) -> None:
        self._streak = 0
        self._baseline.clear()

    def observe(self, step: int, stats: StepRecord) -> Verdict | None:
        if stats.overflow:
            return None
        if not stats.skipped:
            self._streak = 0
            self._baseline.push(stats)
            return None
        self._streak += 1
        if self._streak < self.patience:
            return None
        return self._verdict(
            step, self._streak, self.patience, self._baseline.first_to_cross(stats),
            f"{self._streak} steps in a row skipped as spikes or non-finite (patience "
            f"{self.patience}): the run does not settle")
