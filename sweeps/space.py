"""The search space: parameter definitions, define-by-run suggestions, samplers and pruners.

A space maps a parameter name to a :class:`FloatParam`, :class:`IntParam` or
:class:`CategoricalParam`. A name is a :class:`~stability.config.StabilityConfig` field
(``lr``) or a workload argument (``workload.loss``); it is also the Optuna parameter name.
A parameter with ``when`` is suggested only while each named categorical parent holds one of
the listed values; :func:`parse_space` orders the space so that parents come first.

Optuna is imported lazily (only :func:`make_sampler` / :func:`make_pruner` need it), so the spec
can be validated without it.
"""

from __future__ import annotations

import dataclasses
import numbers
import random
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stability.config import StabilityConfig
from sweeps._spec_checks import check_range, check_when, parse_choices
from sweeps.spec import SpecError, as_bool, as_int, as_number, check_keys

if TYPE_CHECKING:
    import optuna

    from sweeps.spec import SweepSpec

__all__ = [
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "Param",
    "config_from_params",
    "grid_points",
    "is_active",
    "make_pruner",
    "make_sampler",
    "parse_space",
    "suggest",
]

WORKLOAD_PREFIX = "workload."
MAX_GRID_POINTS = 100_000

Condition = tuple[tuple[str, tuple[Any, ...]], ...]
"""``when`` as ((parent, allowed values), ...); every pair must hold (AND)."""


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


# ------------------------------------------------------------------ parameters
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
        return any(_same(value, c) for c in self.choices)

    def grid_values(self) -> list[Any]:
        return list(self.choices)

    def describe(self) -> str:
        return "one of " + ", ".join(_fmt(c) for c in self.choices)

    def to_dict(self) -> dict[str, Any]:
        return _with_when({"type": "categorical", "choices": list(self.choices)}, self.when)


Param = FloatParam | IntParam | CategoricalParam


def is_active(param: Param, values: Mapping[str, Any]) -> bool:
    """Whether ``param`` is suggested, given the values of the params suggested before it."""
    return all(parent in values and any(_same(values[parent], v) for v in allowed)
               for parent, allowed in param.when)


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python; a categorical choice keeps its type.
    return (type(a) is type(b) and a == b) or (
        isinstance(a, int | float) and isinstance(b, int | float)
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def _on_grid(value: float, low: float, step: float) -> bool:
    k = (value - low) / step
    return abs(k - round(k)) < 1e-8


def _with_when(out: dict[str, Any], when: Condition) -> dict[str, Any]:
    if when:
        out["when"] = {parent: list(values) for parent, values in when}
    return out


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
    return _ordered({name: _canonical_when(p, params) for name, p in params.items()})


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
                                if any(_same(c, v) for v in values)))
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


# ------------------------------------------------------------------ suggestions
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


# ------------------------------------------------------------------ samplers and pruners
def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded with ``spec.seed``."""
    import optuna

    opts = dict(spec.sampler.options)
    name = spec.sampler.name
    conditional = any(p.when for p in spec.space.values())
    if name == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if name == "grid":
        return _grid_sampler(spec, conditional)
    if name == "cmaes":
        # Explosions are PRUNED with a bad last value: CMA-ES must see them to move away.
        opts.setdefault("consider_pruned_trials", True)
        return optuna.samplers.CmaEsSampler(seed=spec.seed, **opts)
    # TPE: multivariate models interactions (lr x clip threshold); group=True splits the
    # space by which conditional params a trial used, so conditional params join the model.
    opts.setdefault("multivariate", True)
    opts.setdefault("group", conditional and opts["multivariate"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=spec.seed, **opts)


def _grid_sampler(spec: SweepSpec, conditional: bool) -> optuna.samplers.BaseSampler:
    import optuna

    class _AskTellGridSampler(optuna.samplers.GridSampler):
        """GridSampler for the ask/tell driver. Optuna's ``after_trial`` calls ``study.stop()``
        once the grid is used up, which raises RuntimeError outside ``optimize()``: the
        driver's last ``tell`` would crash the sweep. The driver stops at ``n_trials``."""

        def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        state: optuna.trial.TrialState, values: Any) -> None:
            return None

    grid = {name: param.grid_values() or [] for name, param in spec.space.items()}
    sampler = _AskTellGridSampler(grid, seed=spec.seed)
    if not conditional:
        return sampler
    # GridSampler walks the full Cartesian product, where an inactive conditional param would
    # repeat the same configuration once per value. Give it the distinct points instead; an
    # inactive param's slot holds its first value, which is never suggested.
    if not hasattr(sampler, "_all_grids") or not hasattr(sampler, "_param_names"):
        raise RuntimeError("this Optuna's GridSampler has no _all_grids; conditional grids "
                           "need Optuna 4.x-5.x, or use sampler tpe")
    names: list[str] = sampler._param_names
    points = [tuple(p.get(n, grid[n][0]) for n in names) for p in grid_points(spec.space)]
    random.Random(spec.seed).shuffle(points)
    sampler._all_grids = points
    sampler._n_min_trials = len(points)
    return sampler


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    """Optuna's pruner from the spec. Explosion pruning is separate and always on.

    Steps are training steps (reports arrive every ``report_every`` steps); Hyperband's
    resources default to ``report_every`` .. ``steps``.
    """
    import optuna

    opts = dict(spec.pruner.options)
    name = spec.pruner.name
    if name == "median":
        return optuna.pruners.MedianPruner(**opts)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(**opts)
    if name == "hyperband":
        opts.setdefault("min_resource", spec.report_every)
        opts.setdefault("max_resource", spec.steps)
        return optuna.pruners.HyperbandPruner(**opts)
    if name == "successive_halving":
        # min_resource "auto" would wait for a completed trial: start at the first report
        opts.setdefault("min_resource", spec.report_every)
        return optuna.pruners.SuccessiveHalvingPruner(**opts)
    return optuna.pruners.NopPruner()
