"""From a search space to concrete values: a trial's suggestions, a stored trial's config, a grid.

:func:`suggest` asks an Optuna trial for every active param (define-by-run);
:func:`config_from_params` rebuilds the same StabilityConfig and workload arguments from stored
params; :func:`grid_points` lists every distinct combination for the grid sampler. A param named
``workload.<arg>`` is a workload argument, any other a StabilityConfig field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from stability.config import StabilityConfig
from sweeps.spec._params import CategoricalParam, IntParam, Param, is_active
from sweeps.spec._values import SpecError, same

if TYPE_CHECKING:
    import optuna

    from sweeps.spec.sweep_spec import SweepSpec

__all__ = ["MAX_GRID_POINTS", "WORKLOAD_PREFIX", "check_grid_size", "config_from_params",
           "grid_points", "grid_size", "suggest"]

WORKLOAD_PREFIX = "workload."
MAX_GRID_POINTS = 100_000


def suggest(trial: optuna.trial.BaseTrial, spec: SweepSpec
            ) -> tuple[StabilityConfig, dict[str, Any]]:
    """Suggest every active param of ``spec.space`` on ``trial``.

    Returns the StabilityConfig (``fixed`` + suggested fields) and the workload arguments
    (``workload.args`` + suggested ``workload.*`` params).
    """
    values: dict[str, Any] = {}
    for name, param in spec.space.items():
        if is_active(param, values):
            values[name] = param.suggest(trial)
    return _assemble(values, spec)


def config_from_params(params: Mapping[str, Any], spec: SweepSpec
                       ) -> tuple[StabilityConfig, dict[str, Any]]:
    """Rebuild a trial's config and workload args from its params (e.g. ``FrozenTrial.params``).

    Every active param must be given and inside its range; a param the space does not have,
    or one whose condition does not hold, is refused (the study's space has changed).
    """
    for name in params:
        if name not in spec.space:
            raise SpecError(f"params.{name}", "not a param of this sweep's space; valid: "
                            f"{', '.join(spec.space)}")
    values: dict[str, Any] = {}
    for name, param in spec.space.items():
        if not is_active(param, values):
            if name in params:
                cond = ", ".join(f"{p} in {list(v)}" for p, v in param.when)
                raise SpecError(f"params.{name}", f"given ({params[name]!r}) but inactive: it "
                                f"needs {cond}; drop it")
            continue
        if name not in params:
            raise SpecError(f"params.{name}", "missing; the space needs a value for it")
        value = params[name]
        if not param.contains(value):
            raise SpecError(f"params.{name}", f"{value!r} is outside {param.describe()}; use a "
                            "value inside the space")
        # numpy scalars (e.g. from a trials dataframe) become the Python type Optuna gives
        values[name] = value if isinstance(param, CategoricalParam) else (
            int(value) if isinstance(param, IntParam) else float(value))
    return _assemble(values, spec)


def _assemble(values: Mapping[str, Any], spec: SweepSpec
              ) -> tuple[StabilityConfig, dict[str, Any]]:
    config_values = {k: v for k, v in values.items() if not k.startswith(WORKLOAD_PREFIX)}
    workload_args = dict(spec.workload.args)
    workload_args.update({k[len(WORKLOAD_PREFIX):]: v for k, v in values.items()
                          if k.startswith(WORKLOAD_PREFIX)})
    return StabilityConfig(**{**spec.fixed, **config_values}), workload_args


def grid_size(space: Mapping[str, Param]) -> int:
    """How many points :func:`grid_points` lists, counted without listing them or any param's
    values (a range of 10^9 integers is counted, not built). A param a condition refers to is
    split into the values the conditions name and the rest, counted together."""
    _check_grid_params(space)
    ordered = list(space.values())
    named: dict[str, list[Any]] = {}
    for param in ordered:
        for parent, allowed in param.when:
            named.setdefault(parent, []).extend(allowed)

    def count(i: int, values: dict[str, Any]) -> int:
        if i == len(ordered):
            return 1
        param = ordered[i]
        if not is_active(param, values):
            return count(i + 1, values)
        size = param.grid_size() or 0
        if param.name not in named:
            return size * count(i + 1, values)
        total, listed = 0, 0
        for value in _distinct(v for v in named[param.name] if param.contains(v)):
            listed += 1
            values[param.name] = value
            total += count(i + 1, values)
        if size > listed:  # the values no condition names: one branch, counted size - listed
            values[param.name] = _UNNAMED
            total += (size - listed) * count(i + 1, values)
        del values[param.name]
        return total

    return count(0, {})


_UNNAMED = object()
"""Stands for a value of a param that no condition names (equal to no value)."""


def _distinct(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if not any(same(value, seen) for seen in out):
            out.append(value)
    return out


def _check_grid_params(space: Mapping[str, Param]) -> None:
    for name, param in space.items():
        if param.grid_size() is None:
            raise SpecError("sampler.name", f"grid needs every param categorical, int, or float "
                            f"with step; space.{name} is a float without step (add step, or "
                            "make it categorical)")


def check_grid_size(space: Mapping[str, Param]) -> int:
    """The grid's size (:func:`grid_size`); a SpecError if it is over :data:`MAX_GRID_POINTS`."""
    size = grid_size(space)
    if size > MAX_GRID_POINTS:
        raise SpecError("space", f"the grid has {size:,} points, more than {MAX_GRID_POINTS:,}; "
                        "use coarser steps or fewer choices, or sampler tpe")
    return size


def grid_points(space: Mapping[str, Param]) -> list[dict[str, Any]]:
    """Every distinct combination of active params (a conditional param adds points only
    under its condition). Needs every param categorical, int, or float with ``step``; a grid of
    more than :data:`MAX_GRID_POINTS` is refused after counting it (:func:`grid_size`), before
    anything is listed."""
    check_grid_size(space)
    ordered = list(space.values())
    points: list[dict[str, Any]] = []

    def expand(i: int, values: dict[str, Any]) -> None:
        if i == len(ordered):
            points.append(dict(values))
            return
        param = ordered[i]
        if not is_active(param, values):
            expand(i + 1, values)
            return
        for value in param.grid_values() or []:
            values[param.name] = value
            expand(i + 1, values)
        del values[param.name]

    expand(0, {})
    return points

