"""The parameter types of a search space: what a param is, and when it is active.

:class:`FloatParam`, :class:`IntParam` and :class:`CategoricalParam` know their range, how to
suggest a value on an Optuna trial, whether a value lies inside them, their grid and their
spec form. ``when`` (a :data:`Condition`) makes a param depend on categorical parents;
:func:`is_active` says whether it holds. Parsing the ``space:`` mapping into these is
:mod:`sweeps.spec.space`; turning them into a trial's config is :mod:`sweeps.spec._suggest`.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweeps.spec._values import fmt, same

if TYPE_CHECKING:
    import optuna

__all__ = ["CategoricalParam", "Condition", "FloatParam", "IntParam", "Param", "is_active"]

Condition = tuple[tuple[str, tuple[Any, ...]], ...]
"""``when`` as ((parent, allowed values), ...); every pair must hold (AND)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class FloatParam:
    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None
    when: Condition = ()

    def suggest(self, trial: optuna.trial.BaseTrial) -> float:
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        value = float(value)
        tol = 1e-12 * max(1.0, abs(self.low), abs(self.high))
        if not self.low - tol <= value <= self.high + tol:
            return False
        return self.step is None or _on_grid(value, self.low, self.step)

    def grid_size(self) -> int | None:
        """How many values :meth:`grid_values` lists, without listing them."""
        return None if self.step is None else round((self.high - self.low) / self.step) + 1

    def grid_values(self) -> list[float] | None:
        if self.step is None:
            return None
        n = round((self.high - self.low) / self.step)
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]

    def describe(self) -> str:
        step = f" step {self.step}" if self.step else ""
        return f"[{self.low}, {self.high}]{' log' if self.log else ''}{step}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "float", "low": self.low, "high": self.high,
                               "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        return _with_when(out, self.when)


@dataclass(frozen=True, kw_only=True, slots=True)
class IntParam:
    name: str
    low: int
    high: int
    step: int = 1
    log: bool = False
    when: Condition = ()

    def suggest(self, trial: optuna.trial.BaseTrial) -> int:
        return trial.suggest_int(self.name, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return False
        value = int(value)
        return self.low <= value <= self.high and (value - self.low) % self.step == 0

    def grid_size(self) -> int:
        return len(range(self.low, self.high + 1, self.step))

    def grid_values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def describe(self) -> str:
        return f"integers [{self.low}, {self.high}] step {self.step}{' log' if self.log else ''}"

    def to_dict(self) -> dict[str, Any]:
        out = {"type": "int", "low": self.low, "high": self.high, "step": self.step,
               "log": self.log}
        return _with_when(out, self.when)


@dataclass(frozen=True, kw_only=True, slots=True)
class CategoricalParam:
    name: str
    choices: tuple[Any, ...]
    when: Condition = ()

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        return trial.suggest_categorical(self.name, list(self.choices))

    def contains(self, value: Any) -> bool:
        return any(same(value, c) for c in self.choices)

    def grid_size(self) -> int:
        return len(self.choices)

    def grid_values(self) -> list[Any]:
        return list(self.choices)

    def describe(self) -> str:
        return "one of " + ", ".join(fmt(c) for c in self.choices)

    def to_dict(self) -> dict[str, Any]:
        return _with_when({"type": "categorical", "choices": list(self.choices)}, self.when)


Param = FloatParam | IntParam | CategoricalParam


def is_active(param: Param, values: Mapping[str, Any]) -> bool:
    """Whether ``param`` is suggested, given the values of the params suggested before it."""
    return all(parent in values and any(same(values[parent], v) for v in allowed)
               for parent, allowed in param.when)


def _on_grid(value: float, low: float, step: float) -> bool:
    k = (value - low) / step
    return abs(k - round(k)) < 1e-8


def _with_when(out: dict[str, Any], when: Condition) -> dict[str, Any]:
    if when:
        out["when"] = {parent: list(values) for parent, values in when}
    return out
