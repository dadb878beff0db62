"""The result of a diagnosis: :class:`Diagnosis` (what happened) and :class:`Suggestion` (a fix).

Both are plain records; :meth:`Diagnosis.summary` is the text an engineer reads and
:meth:`Diagnosis.to_dict` the JSON form. :mod:`stability.diagnose` fills them in and
:mod:`stability._advice` writes the suggestions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from stability.records import Verdict

__all__ = ["OUTCOMES", "Diagnosis", "Suggestion"]


@dataclass(slots=True, frozen=True)
class Suggestion:
    """A concrete fix: what to change, why (with its number), and the StabilityConfig edit."""

    intervention: str
    """``precision``, ``clip``, ``warmup``, ``lr`` or ``init``."""
    text: str
    changes: dict[str, Any]


OUTCOMES = ("exploded", "never_learned", "rescued", "healthy")
"""What :attr:`Diagnosis.outcome` can be, the first that applies."""


@dataclass(slots=True)
class Diagnosis:
    """What an explosion looked like, or that the run never learned, was rescued by skipped
    updates, or was healthy."""

    exploded: bool
    onset_step: int | None = None
    verdict_step: int | None = None
    verdict_kind: str | None = None
    first_layer: str | None = None
    growth_rate: float | None = None
    """per-step factor of the global norm between onset and verdict (exp of the log slope)."""
    loss_before: float | None = None
    """mean loss over the (up to) 50 steps before onset."""
    loss_after: float | None = None
    """loss at the verdict step (may be inf or NaN)."""
    lr_at_onset: float | None = None
    overflow_count: int = 0
    pre_onset_norm_p90: float | None = None
    """90th percentile of the global norms before onset (the whole run when healthy)."""
    suggestions: list[Suggestion] = field(default_factory=list)
    steps: int = 0
    max_norm: float | None = None
    max_norm_step: int | None = None
    verdict: Verdict | None = None
    skipped_count: int = 0
    """updates dropped as spikes or non-finite (fp16 overflow steps not counted)."""
    first_skipped_step: int | None = None
    never_learned: bool = False
    """no explosion, but the loss of the last quarter stayed near its start (or baseline)."""
    loss_start: float | None = None
    """median of the first 5 losses (never learned only)."""
    loss_end: float | None = None
    """median loss of the last quarter of the steps (never learned only)."""
    loss_baseline: float | None = None
    """the constant-prediction loss the caller passed, if any."""
    stall_step: int | None = None
    """the first step where the smoothed loss came within 10 % of its final level."""
    spike_norm: float | None = None
    """the run's largest global norm, when it was >= 5x the run's median (never learned)."""
    spike_step: int | None = None
    spike_ratio: float | None = None

    @property
    def outcome(self) -> str:
        """``exploded``, ``never_learned``, ``rescued`` (trained on after skipped updates) or
        ``healthy``: the first that applies."""
        if self.exploded:
            return "exploded"
        if self.never_learned:
            return "never_learned"
        return "rescued" if self.skipped_count else "healthy"

    def summary(self) -> str:
        """A few lines an engineer reads after a blow-up (or a healthy run)."""
        if not self.steps:
            return "no steps recorded: nothing to diagnose."
        peak = (f"max global grad norm {_fmt(self.max_norm)} at step {self.max_norm_step}"
                if self.max_norm is not None else "no finite grad norm")
        skips = (f"{self.skipped_count} update(s) skipped as spikes or non-finite, the first "
                 f"at step {self.first_skipped_step}" if self.skipped_count else "")
        if self.never_learned:
            return self._stall_summary(peak, skips)
        if not self.exploded:
            head = (f"rescued: no explosion in {self.steps} steps after {skips}"
                    if skips else f"healthy: no explosion in {self.steps} steps")
            return f"{head}; {peak}, p90 {_fmt(self.pre_onset_norm_p90)}."
        v = self.verdict
        lines = [f"EXPLODED: {self.verdict_kind} at step {self.verdict_step}"
                 + (f" ({v.detector}: {v.message})" if v is not None and v.message else "")]
        lines.append(f"onset at step {self.onset_step} (lr {_fmt(self.lr_at_onset)}), first "
                     f"layer to rise: {self.first_layer or 'unknown'}")
        if self.growth_rate is not None:
            lines.append(f"global grad norm grew x{self.growth_rate:.3g} per step from onset "
                         f"to verdict; pre-onset p90 {_fmt(self.pre_onset_norm_p90)}; {peak}")
        lines.append(f"loss {_fmt(self.loss_before)} before onset -> "
                     f"{_fmt(self.loss_after)} at the verdict")
        if self.overflow_count:
            lines.append(f"fp16 overflow (skipped) steps: {self.overflow_count}")
        if self.suggestions:
            lines.append("suggested fixes, best first:")
            lines += [f"  {i}. {s.text}  -> {s.changes}"
                      for i, s in enumerate(self.suggestions, 1)]
        return "\n".join(lines)

    def _stall_summary(self, peak: str, skips: str) -> str:
        ref = (f"the constant-prediction loss {_fmt(self.loss_baseline)}"
               if self.loss_baseline is not None else f"its start {_fmt(self.loss_start)}")
        end, base = self.loss_end or math.nan, self.loss_baseline or self.loss_start or math.nan
        lines = [f"NEVER LEARNED: no explosion in {self.steps} steps, but the loss of the last "
                 f"quarter, {_fmt(self.loss_end)}, is {end / base:.2f}x {ref}"]
        if self.loss_baseline is not None:
            lines[0] += f" (start {_fmt(self.loss_start)})"
        where = (f"stalled from step {self.stall_step} (the smoothed loss within 10% of where "
                 "it ended)")
        if self.spike_norm is not None:
            when = "before" if (self.spike_step or 0) <= (self.stall_step or 0) else "after"
            where += (f"; largest norm spike {_fmt(self.spike_norm)} at step {self.spike_step}, "
                      f"{when} the stall ({self.spike_ratio:.3g}x the run's median norm)")
        else:
            where += "; no norm spike (none 5x the run's median norm)"
        lines.append(where)
        lines.append(f"{peak}, p90 {_fmt(self.pre_onset_norm_p90)}" + (f"; {skips}" if skips
                                                                         else ""))
        if self.suggestions:
            lines.append("suggested fixes, best first:")
            lines += [f"  {i}. {s.text}  -> {s.changes}"
                      for i, s in enumerate(self.suggestions, 1)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: NaN becomes None, +-inf the strings ``"inf"`` / ``"-inf"``."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["suggestions"] = [asdict(s) for s in self.suggestions]
        data["verdict"] = self.verdict.to_dict() if self.verdict is not None else None
        data["summary"] = self.summary()
        data["outcome"] = self.outcome
        return _jsonable(data)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
