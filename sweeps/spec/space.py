"""The search space: parameter definitions, their checks and define-by-run suggestions.

A space maps a parameter name to a :class:`FloatParam`, :class:`IntParam` or
:class:`CategoricalParam`. A name is a :class:`~stability.config.StabilityConfig` field
(``lr``) or a workload argument (``workload.loss``); it is also the Optuna parameter name.
A parameter with ``when`` is suggested only while each named categorical parent holds one of
the listed values; :func:`parse_space` orders the space so that parents come first.

Optuna is imported lazily (only :func:`suggest` and :mod:`samplers` need it), so the spec
can be validated without it.

The parameter types live in :mod:`sweeps.spec._params` and the suggestions in
:mod:`sweeps.spec._suggest`; every name is exported from here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from sweeps.spec._params import CategoricalParam, Condition, FloatParam, IntParam, Param, is_active
from sweeps.spec._suggest import (
    config_from_params,
    grid_points,
    suggest,
)
from sweeps.spec._values import (
    SpecError,
    as_bool,
    as_int,
    as_number,
    check_keys,
    did_you_mean,
    fmt,
    same,
)

__all__ = [
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "Param",
    "check_range",
    "check_reachable",
    "check_when",
    "config_from_params",
    "grid_points",
    "is_active",
    "parse_choices",
    "parse_space",
    "suggest",
]


# ------------------------------------------------------------------ parsing
_KEYS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "step", "log", "when"),
    "categorical": ("type", "choices", "when"),
}


def parse_space(raw: Any, *, fixed: Mapping[str, Any] | None = None) -> dict[str, Param]:
    """Validate the ``space:`` mapping; return its params ordered so that parents come first."""
    if not isinstance(raw, Mapping) or not raw:
        raise SpecError("space", "must be a non-empty mapping of param name -> definition, e.g. "
                        f"lr: {{type: float, low: 1.0e-4, high: 1.0, log: true}}; got {raw!r}")
    params: dict[str, Param] = {}
    for name, definition in raw.items():
        if not isinstance(name, str) or not name:
            raise SpecError(f"space.{name}", "a param name must be a non-empty string")
        params[name] = _parse_param(name, definition)
    for param in params.values():
        check_when(param, params, fixed or {})
    ordered = _ordered({name: _canonical_when(p, params) for name, p in params.items()})
    check_reachable(ordered)
    return ordered


_MAX_CONDITION_CASES = 100_000


def check_reachable(params: Mapping[str, Param]) -> None:
    """Every conditional param is active for some values of the params its conditions name:
    one whose condition contradicts its parents' own conditions would never be sampled.
    ``params`` in order, parents first (as :func:`parse_space` returns them)."""
    ordered = list(params.values())
    named = {parent for p in ordered for parent, _ in p.when}
    parents = [p for p in ordered if p.name in named and isinstance(p, CategoricalParam)]
    if math.prod(len(p.choices) + 1 for p in parents) > _MAX_CONDITION_CASES:
        return  # too many cases to try them all; the sampler copes with a dead param
    ever: set[str] = set()

    def walk(i: int, values: dict[str, Any]) -> None:
        if i == len(parents):
            ever.update(p.name for p in ordered if is_active(p, values))
            return
        parent = parents[i]
        if not is_active(parent, values):
            walk(i + 1, values)
            return
        for choice in parent.choices:
            values[parent.name] = choice
            walk(i + 1, values)
        del values[parent.name]

    walk(0, {})
    for param in ordered:
        if param.name not in ever:
            needs = [f"{parent} is only sampled when "
                     + " and ".join(f"{g} is {'/'.join(fmt(v) for v in vs)}" for g, vs in
                                    params[parent].when)
                     for parent, _ in param.when if params[parent].when]
            why = f" ({'; '.join(needs)})" if needs else ""
            raise SpecError(f"space.{param.name}.when", "this condition can never hold, so "
                            f"{param.name} would never be sampled{why}; fix the condition or "
                            "drop the param")


def _parse_param(name: str, raw: Any) -> Param:
    path = f"space.{name}"
    if isinstance(raw, list):  # shorthand: a list is a categorical param
        raw = {"type": "categorical", "choices": raw}
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be a mapping like {type: float, low: 0.1, high: 1.0} "
                        f"or a list of choices; got {raw!r}")
    kind = raw.get("type", "categorical" if "choices" in raw else None)
    if kind not in _KEYS:
        raise SpecError(f"{path}.type", f"must be float, int or categorical; got {kind!r}")
    check_keys(path, raw, _KEYS[kind])
    when = _parse_when(path, raw.get("when"))
    if kind == "categorical":
        return CategoricalParam(name=name, choices=parse_choices(path, raw.get("choices")),
                                when=when)
    for key in ("low", "high"):
        if key not in raw:
            raise SpecError(f"{path}.{key}", f"missing; a {kind} param needs low and high")
    log = as_bool(f"{path}.log", raw.get("log", False))
    low: float
    high: float
    step: float | None
    if kind == "int":
        low, high = as_int(f"{path}.low", raw["low"]), as_int(f"{path}.high", raw["high"])
        step = as_int(f"{path}.step", raw.get("step", 1), minimum=1)
    else:
        low, high = float(as_number(f"{path}.low", raw["low"])), float(
            as_number(f"{path}.high", raw["high"]))
        step = None if raw.get("step") is None else float(as_number(f"{path}.step",
                                                                    raw["step"]))
    check_range(path, kind, low, high, log, step)
    if kind == "int":
        return IntParam(name=name, low=int(low), high=int(high), step=int(step or 1), log=log,
                        when=when)
    return FloatParam(name=name, low=low, high=high, log=log, step=step, when=when)


def _parse_when(path: str, raw: Any) -> Condition:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not raw:
        raise SpecError(f"{path}.when", "must be a mapping of categorical param -> list of "
                        f"values, e.g. {{clip_method: [norm]}}; got {raw!r}")
    out = []
    for parent, values in raw.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise SpecError(f"{path}.when.{parent}", "must list at least one value")
        out.append((str(parent), tuple(values)))
    return tuple(sorted(out))


def _canonical_when(param: Param, params: Mapping[str, Param]) -> Param:
    """List a condition's values once each, in the order of the parent's choices."""
    if not param.when:
        return param
    when = tuple((parent, tuple(c for c in params[parent].choices  # type: ignore[union-attr]
                                if any(same(c, v) for v in values)))
                 for parent, values in param.when)
    return dataclasses.replace(param, when=when)


def _ordered(params: dict[str, Param]) -> dict[str, Param]:
    """Declaration order, except that every parent comes before its children; refuses cycles."""
    out: dict[str, Param] = {}
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in out:
            return
        if name in visiting:
            cycle = [*visiting[visiting.index(name):], name]
            raise SpecError(f"space.{name}.when", f"conditions form a cycle "
                            f"({' -> '.join(cycle)}); remove one of the conditions")
        visiting.append(name)
        for parent, _ in params[name].when:
            visit(parent)
        visiting.pop()
        out[name] = params[name]

    for name in params:
        visit(name)
    return out


# ------------------------------------------------------------------ checks of one param
def check_range(path: str, kind: str, low: float, high: float, log: bool,
                 step: float | None) -> None:
    """A float/int param's bounds: low < high, log needs low > 0, step divides the range."""
    if low > high:
        raise SpecError(path, f"low ({low}) must be < high ({high}); swap them")
    if low == high:
        raise SpecError(path, f"low ({low}) must be < high ({high}); to hold a value "
                        "constant, put it under fixed")
    if log and kind == "float" and low <= 0:
        raise SpecError(f"{path}.low", f"log scale needs low > 0; got {low}")
    if log and kind == "int" and low < 1:
        raise SpecError(f"{path}.low", f"log scale needs low >= 1 for an int param; got {low}")
    if step is None:
        return
    if step <= 0:
        raise SpecError(f"{path}.step", f"must be > 0; got {step}")
    if log and (kind == "float" or step != 1):
        raise SpecError(f"{path}.step", f"cannot be combined with log: true (got step {step}); "
                        "drop step or set log: false")
    n = (high - low) / step
    if n < 1 - 1e-9:
        raise SpecError(f"{path}.step", f"step ({step}) is larger than high - low "
                        f"({high - low:g}); use a smaller step")
    if abs(n - round(n)) > 1e-9 * max(1.0, n):
        below, above = low + math.floor(n) * step, low + math.ceil(n) * step
        if kind == "float":
            below, above = round(below, 12), round(above, 12)
        raise SpecError(f"{path}.step", f"high - low ({high - low:g}) is not a multiple of step "
                        f"({step}); set high to {below} or {above}")


def parse_choices(path: str, raw: Any) -> tuple[Any, ...]:
    """A categorical param's choices: a non-empty list of distinct plain values."""
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"{path}.choices", f"must be a non-empty list; got {raw!r}")
    seen: list[Any] = []
    for value in raw:
        if value is not None and not isinstance(value, str | int | float | bool):
            raise SpecError(f"{path}.choices", "choices must be strings, numbers, true/false "
                            f"or null; got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{path}.choices", f"choices must be finite; got {value!r}")
        if any(same(value, s) for s in seen):
            raise SpecError(f"{path}.choices", f"{fmt(value)} is listed twice; list each "
                            "choice once")
        seen.append(value)
    return tuple(seen)


def check_when(param: Param, params: Mapping[str, Param], fixed: Mapping[str, Any]) -> None:
    """Each parent a ``when`` names is a categorical param of the space, with those values."""
    for parent, values in param.when:
        path = f"space.{param.name}.when.{parent}"
        if parent not in params:
            hint = (f"; {parent} is fixed, so drop the condition" if parent in fixed
                    else did_you_mean(parent, list(params)))
            raise SpecError(path, f"{parent!r} is not a param of the space; a condition must "
                            f"name a categorical param declared under space{hint}")
        parent_param = params[parent]
        if not isinstance(parent_param, CategoricalParam):
            raise SpecError(path, f"{parent!r} is a {type(parent_param).__name__[:-5].lower()} "
                            "param; a condition must name a categorical param")
        for value in values:
            if not parent_param.contains(value):
                choices = ", ".join(str(c) for c in parent_param.choices)
                raise SpecError(path, f"{fmt(value)} is not a choice of {parent} ({choices}); "
                                "use one of those")
