"""Explosion detectors behind one small interface: ``observe(step, stats) -> Verdict | None``.

The guard feeds every optimizer step, in order, as a host-side :class:`StepRecord` (pre-clip
norms); the first :class:`Verdict` stops the run. Detectors keep O(window) state, do plain
float math and never allocate per step beyond one small copy of the per-layer norms.

The norm detectors work on the *log* of the global norm: gradient-norm noise is
multiplicative (a lognormal-like spread whose width scales with the level), so a z-score or a
slope in log space means the same thing at norm 0.1 and at norm 100, and one huge spike does
not blow up a linear-space variance and blind the detector for the next hundred steps.

Non-finite values are left to :class:`NonFiniteDetector`; the other detectors skip them.
No rule looks at the absolute size of a norm or a loss, only at ratios to the run's own values,
so a loss multiplied by a constant (and with it every norm) gets the same verdicts.
:func:`replay` runs a detector over a recorded trace (``benchmarks/detection_quality.py``
tunes the defaults of :func:`default_detector` that way).
"""

from __future__ import annotations

from stability.detectors._base import Detector, NullDetector, first_nonfinite_layer
from stability.detectors._ceiling import CeilingDetector
from stability.detectors._composite import (
    DEFAULT_DETECTORS,
    SKIP_DETECTORS,
    CompositeDetector,
    default_detector,
    detector_for,
    detectors_for,
)
from stability.detectors._growth import GrowthDetector
from stability.detectors._loss import LossDivergenceDetector
from stability.detectors._median import MedianRatioDetector
from stability.detectors._nonfinite import NonFiniteDetector
from stability.detectors._recorder import VerdictRecorder
from stability.detectors._replay import records_from_trace, replay
from stability.detectors._spike import ZScoreSpikeDetector
from stability.detectors._unsettled import UnsettledDetector

__all__ = [
    "DEFAULT_DETECTORS",
    "SKIP_DETECTORS",
    "CeilingDetector",
    "CompositeDetector",
    "Detector",
    "GrowthDetector",
    "LossDivergenceDetector",
    "MedianRatioDetector",
    "NonFiniteDetector",
    "NullDetector",
    "UnsettledDetector",
    "VerdictRecorder",
    "ZScoreSpikeDetector",
    "default_detector",
    "detector_for",
    "detectors_for",
    "first_nonfinite_layer",
    "records_from_trace",
    "replay",
]
