"""Several detectors as one, and the default composite with keyed overrides."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from stability.detectors._base import Detector
from stability.detectors._ceiling import CeilingDetector
from stability.detectors._growth import GrowthDetector
from stability.detectors._loss import LossDivergenceDetector
from stability.detectors._median import MedianRatioDetector
from stability.detectors._nonfinite import NonFiniteDetector
from stability.detectors._spike import ZScoreSpikeDetector
from stability.records import StepRecord, Verdict


class CompositeDetector(Detector):
    """Runs every detector on every step; the first verdict, in the given order, wins."""

    kind = "composite"

    def __init__(self, detectors: Iterable[Detector]) -> None:
        self.detectors: tuple[Detector, ...] = tuple(detectors)
        for i, d in enumerate(self.detectors):
            if not isinstance(d, Detector):
                raise TypeError(f"CompositeDetector: detectors[{i}] must be a Detector but "
                                f"got {type(d).__name__}; wrap custom logic in a Detector "
                                "subclass.")

    def reset(self) -> None:
        for d in self.detectors:
            d.reset()

    def observe(self, step: int, stats: StepRecord) -> Verdict | None:
        found = None
        for d in self.detectors:  # all observe, so every detector's state stays current
            verdict = d.observe(step, stats)
            if found is None:
                found = verdict
        return found


DEFAULT_DETECTORS: dict[str, type[Detector]] = {
    "nonfinite": NonFiniteDetector,
    "ceiling": CeilingDetector,
    "spike": ZScoreSpikeDetector,
    "median_ratio": MedianRatioDetector,
    "growth": GrowthDetector,
    "loss_divergence": LossDivergenceDetector,
}
"""The default composite, in verdict-priority order, keyed by verdict kind."""


def default_detector(overrides: Mapping[str, Any] | None = None, /,
                     **kwargs: Any) -> CompositeDetector:
    """The default composite: nonfinite, ceiling, spike, median_ratio, growth, loss_divergence.

    Each member's constructor defaults were set on a labelled corpus of real runs
    (``benchmarks/detection_quality.py``, which prints the figures and the reasons).

    Overrides come as a mapping and/or keyword arguments, keyed ``"<kind>.<argument>"``
    (``{"spike.z_threshold": 5.0}`` or ``**{"growth.window": 24}``) or nested
    (``{"spike": {"z_threshold": 5.0}}``). ``{"<kind>": None}`` or ``False`` leaves that
    detector out. Unknown kinds or arguments raise ``ValueError`` listing the valid ones.
    """
    merged: dict[str, Any] = {**(overrides or {}), **kwargs}
    params: dict[str, dict[str, Any]] = {kind: {} for kind in DEFAULT_DETECTORS}
    disabled: set[str] = set()
    for key, value in merged.items():
        kind, _, arg = str(key).partition(".")
        if kind not in DEFAULT_DETECTORS:
            raise ValueError(f"default_detector: unknown detector {kind!r} in override "
                             f"{key!r}; valid detectors: {', '.join(DEFAULT_DETECTORS)}.")
        if arg:
            items: dict[str, Any] = {arg: value}
        elif value is None or value is False:
            disabled.add(kind)
            continue
        elif isinstance(value, Mapping):
            items = dict(value)
        else:
            raise ValueError(f"default_detector: override {key!r} must be a mapping of "
                             f"arguments, None or False but got {value!r}; use "
                             f"'{kind}.<argument>' for one argument.")
        valid = [p for p in inspect.signature(DEFAULT_DETECTORS[kind]).parameters
                 if p != "self"]
        for name, v in items.items():
            if name not in valid:
                raise ValueError(f"default_detector: {kind} has no argument {name!r} (in "
                                 f"override {key!r}); valid: {', '.join(valid)}.")
            params[kind][name] = v
    return CompositeDetector(cls(**params[kind]) for kind, cls in DEFAULT_DETECTORS.items()
                             if kind not in disabled)
