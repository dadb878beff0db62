"""Several detectors as one, and the default composite with keyed overrides."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from stability.config import SPIKE_POLICIES, StabilityConfig
from stability.detectors._base import Detector
from stability.detectors._ceiling import CeilingDetector
from stability.detectors._growth import GrowthDetector
from stability.detectors._loss import LossDivergenceDetector
from stability.detectors._median import MedianRatioDetector
from stability.detectors._nonfinite import NonFiniteDetector
from stability.detectors._spike import ZScoreSpikeDetector
from stability.detectors._unsettled import UnsettledDetector
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
"""The default composite of ``on_spike: stop``, in verdict-priority order, keyed by kind."""

SKIP_DETECTORS: dict[str, type[Detector]] = {
    "nonfinite": NonFiniteDetector,
    "unsettled": UnsettledDetector,
    "growth": GrowthDetector,
    "loss_divergence": LossDivergenceDetector,
}
"""The default composite of ``on_spike: skip``: the guard skips spikes on device, so the
spike, median-ratio and ceiling rules give way to *unsettled* (skips that go on)."""

_SKIP_SETTINGS: dict[str, dict[str, Any]] = {
    "nonfinite": {"stop_on_grads": False},
    "loss_divergence": {"ignore_skipped": True},
}


def detectors_for(on_spike: str) -> dict[str, type[Detector]]:
    """The members of the default composite for an ``on_spike`` policy."""
    if on_spike not in SPIKE_POLICIES:
        raise ValueError(f"default_detector: on_spike must be one of "
                         f"{', '.join(SPIKE_POLICIES)}; got {on_spike!r}.")
    return SKIP_DETECTORS if on_spike == "skip" else DEFAULT_DETECTORS


def default_detector(overrides: Mapping[str, Any] | None = None, /, *,
                     on_spike: str = "skip", spike_patience: int = 10,
                     **kwargs: Any) -> CompositeDetector:
    """The default composite for an ``on_spike`` policy (``StabilityConfig.on_spike``).

    - ``stop``: nonfinite, ceiling, spike, median_ratio, growth, loss_divergence;
    - ``skip`` (the default; the guard drops spiking updates on device): nonfinite (a
      non-finite loss), unsettled (``spike_patience`` skipped steps in a row), growth,
      loss_divergence (on the steps that were applied).

    Every rule is scale-free (ratios and logs of the run's own values); the defaults were
    chosen on a labelled corpus with model families held out
    (``benchmarks/detection_quality.py``, which prints the figures and the reasons).

    Overrides come as a mapping and/or keyword arguments, keyed ``"<kind>.<argument>"``
    (``{"spike.z_threshold": 5.0}`` or ``**{"growth.window": 24}``) or nested
    (``{"spike": {"z_threshold": 5.0}}``). ``{"<kind>": None}`` or ``False`` leaves that
    detector out. An override of a member of the other policy's composite is checked and
    unused (so one sweep spec can search ``on_spike``). Unknown kinds or arguments raise
    ``ValueError`` listing the valid ones.
    """
    members = detectors_for(on_spike)
    known = {**DEFAULT_DETECTORS, **SKIP_DETECTORS}
    merged: dict[str, Any] = {**(overrides or {}), **kwargs}
    params: dict[str, dict[str, Any]] = {kind: {} for kind in members}
    if on_spike == "skip":
        for kind, settings in _SKIP_SETTINGS.items():
            params[kind].update(settings)
        params["unsettled"]["patience"] = spike_patience
    disabled: set[str] = set()
    for key, value in merged.items():
        kind, _, arg = str(key).partition(".")
        if kind not in known:
            raise ValueError(f"default_detector: unknown detector {kind!r} in override "
                             f"{key!r}; valid detectors: {', '.join(known)}.")
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
        valid = [p for p in inspect.signature(known[kind]).parameters if p != "self"]
        for name, v in items.items():
            if name not in valid:
                raise ValueError(f"default_detector: {kind} has no argument {name!r} (in "
                                 f"override {key!r}); valid: {', '.join(valid)}.")
            params.setdefault(kind, {})[name] = v
    if on_spike == "skip":  # the other policy's members: checked above, built here to
        for kind in DEFAULT_DETECTORS.keys() - SKIP_DETECTORS.keys():  # validate values
            if params.get(kind):
                DEFAULT_DETECTORS[kind](**params[kind])
    else:
        for kind in SKIP_DETECTORS.keys() - DEFAULT_DETECTORS.keys():
            if params.get(kind):
                SKIP_DETECTORS[kind](**params[kind])
    return CompositeDetector(cls(**params[kind]) for kind, cls in members.items()
                             if kind not in disabled)


def detector_for(config: StabilityConfig, overrides: Mapping[str, Any] | None = None
                 ) -> CompositeDetector:
    """The default composite for a config's ``on_spike`` and ``spike_patience``."""
    return default_detector(overrides, on_spike=config.on_spike,
                            spike_patience=config.spike_patience)
