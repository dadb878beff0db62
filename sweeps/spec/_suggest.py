"""From a search space to concrete values: a trial's suggestions, a stored trial's config, a grid.

:func:`suggest` asks an Optuna trial for every active param (define-by-run);
:func:`config_from_params` rebuilds the same StabilityConfig and workload arguments from stored
params; :func:`grid_points` lists every distinct combination for the grid sampler. A param named
``workload.<arg>`` is a workload argument, any other a StabilityConfig field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stability.config import StabilityConfig
from sweeps.spec._params import CategoricalParam, IntParam, Param, is_active
from sweeps.spec._values import SpecError

if TYPE_CHECKING:
    import optuna

    from sweeps.spec.sweep_spec import SweepSpec

__all__ = ["MAX_GRID_POINTS", "WORKLOAD_PREFIX", "config_from_params", "grid_points", "suggest"]

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


def grid_points(space: Mapping[str, Param]) -> list[dict[str, Any]]:
    """Every distinct combination of active params (a conditional param adds points only
    under its condition). Needs every param categorical, int, or float with ``step``."""
    for name, param in space.items():
        if param.grid_values() is None:
            raise SpecError("sampler.name", f"grid needs every param categorical, int, or float "
                            f"with step; space.{name} is a float without step (add step, or "
                            "make it categorical)")
    ordered = list(space.values())
    points: list[dict[str, Any]] = []

    def expand(i: int, values: dict[str, Any]) -> None:
        if len(points) > MAX_GRID_POINTS:
            raise SpecError("space", f"the grid has more than {MAX_GRID_POINTS} points; "
                            "use coarser steps or fewer choices, or sampler tpe")
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

