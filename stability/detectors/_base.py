"""The detector interface, the null detector and shared helpers (validation, layer baseline)."""

from __future__ import annotations

import inspect
import math
import warnings
from abc import ABC, abstractmethod
from collections import deque
from typing import Any, ClassVar

import numpy as np

from stability.records import StepRecord, Verdict

_BASELINE_ROWS = 32
"""healthy steps kept per detector to name the first layer to cross (median per layer)."""


def checked_number(owner: Detector, name: str, value: Any, *, integer: bool = False,
            minimum: float | None = None, above: float | None = None,
            below: float | None = None) -> Any:
    """Validate one constructor argument; the message names it, the rule, the value and the
    default (read from the constructor's signature, so it never drifts)."""
    kind = "an integer" if integer else "a finite number"
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    ok = ok and math.isfinite(value)
    rule = ""
    if minimum is not None:
        rule = f" >= {minimum}"
        ok = ok and value >= minimum
    if above is not None:
        rule = f" > {above}"
        ok = ok and value > above
    if below is not None:
        rule += f" and < {below}"
        ok = ok and value < below
    if not ok:
        default = inspect.signature(type(owner)).parameters[name].default
        raise ValueError(f"{owner.name}: {name} must be {kind}{rule} but got {value!r}; "
                         f"pass e.g. {default!r} (the default).")
    return value if integer else float(value)


def first_nonfinite_layer(stats: StepRecord) -> str | None:
    """The first layer, in layer order, whose gradient norm is inf or NaN."""
    norms = np.asarray(stats.layer_norms, dtype=np.float64)
    bad = ~np.isfinite(norms)
    if not bad.any() or len(stats.layer_names) != norms.size:
        return None
    return stats.layer_names[int(np.argmax(bad))]


class LayerBaseline:
    """Per-layer norms of the latest healthy steps: the baseline each layer is compared with."""

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: deque[np.ndarray] = deque(maxlen=_BASELINE_ROWS)

    def push(self, stats: StepRecord) -> None:
        # a reference, not a copy (no allocation per step): records are not mutated once
        # observed; the guard's are rows of a block it keeps for the trace
        self._rows.append(np.asarray(stats.layer_norms, dtype=np.float64))

    def clear(self) -> None:
        self._rows.clear()

    def first_to_cross(self, stats: StepRecord) -> str | None:
        """Non-finite layer first; else the layer with the largest ratio to its own baseline."""
        names = stats.layer_names
        norms = np.asarray(stats.layer_norms, dtype=np.float64)
        if norms.size == 0 or len(names) != norms.size:
            return None
        bad = first_nonfinite_layer(stats)
        if bad is not None:
            return bad
        rows = [r for r in self._rows if r.shape == norms.shape]
        if not rows:
            return names[int(np.argmax(norms))]
        history = np.stack(rows)
        history[~(np.isfinite(history) & (history > 0))] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: no baseline
            base = np.nanmedian(history, axis=0)
            ratio = norms / base
        ratio[~np.isfinite(ratio)] = np.nan
        if np.isnan(ratio).all():
            return names[int(np.argmax(norms))]
        return names[int(np.nanargmax(ratio))]


class Detector(ABC):
    """Watches one step at a time and returns a :class:`Verdict` when the run is exploding."""

    kind: ClassVar[str] = "detector"
    """the verdict kind this detector reports."""

    @property
    def name(self) -> str:
        return type(self).__name__

    @abstractmethod
    def observe(self, step: int, stats: StepRecord) -> Verdict | None:
        """Look at one optimizer step (steps arrive in order); a Verdict means: stop.

        A detector may keep a reference to ``stats.layer_norms``: do not mutate a record's
        arrays after passing it in.
        """

    def reset(self) -> None:  # noqa: B027 - optional hook, nothing to forget by default
        """Forget everything seen so far (a new run)."""

    def _verdict(self, step: int, value: float, threshold: float, layer: str | None,
                 message: str, kind: str | None = None) -> Verdict:
        return Verdict(kind=kind or self.kind, step=int(step), value=float(value),
                       threshold=float(threshold), layer=layer, detector=self.name,
                       message=message)


class NullDetector(Detector):
    """Never fires: stands in where no detection is wanted."""

    kind = "none"

    def observe(self, step: int, stats: StepRecord) -> Verdict | None:
        return None
