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

__all__ = ["Diagnosis", "Suggestion"]


@dataclass(slots=True, frozen=True)
class Suggestion:
    """A concrete fix: what to change, why (with its number), and the StabilityConfig edit."""

    intervention: str
    """``precision``, ``clip``, ``warmup``, ``lr`` or ``init``."""
    text: str
    changes: dict[str, Any]


@dataclass(slots=True)
class Diagnosis:
    """What an explosion looked like, or that the run was healthy."""

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

    def summary(self) -> str:
        """A few lines an engineer reads after a blow-up (or a healthy run)."""
        if not self.steps:
            return "no steps recorded: nothing to diagnose."
        peak = (f"max global grad norm {_fmt(self.max_norm)} at step {self.max_norm_step}"
                if self.max_norm is not None else "no finite grad norm")
        if not self.exploded:
            return (f"healthy: no explosion in {self.steps} steps; {peak}, "
                    f"p90 {_fmt(self.pre_onset_norm_p90)}.")
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: NaN becomes None, +-inf the strings ``"inf"`` / ``"-inf"``."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["suggestions"] = [asdict(s) for s in self.suggestions]
        data["verdict"] = self.verdict.to_dict() if self.verdict is not None else None
        data["summary"] = self.summary()
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
