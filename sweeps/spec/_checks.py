"""Checks of a sweep spec against what lies outside the YAML.

The workload registry (a built-in name, its factory's arguments), StabilityConfig (field
names, value types, each range end and each categorical choice, and their combinations with
``fixed``), and the numeric bounds and choices of a space's params. Split out of
:mod:`sweeps.spec` and :mod:`sweeps.spec.space`, which call these while parsing; every problem
raises :class:`~sweeps.spec.SpecError`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from stability.config import ConfigError, StabilityConfig
from sweeps.spec._params import CategoricalParam, Param
from sweeps.spec._values import (
    BUILTIN_WORKLOAD_NAMES,
    NAME_RE,
    RESERVED_WORKLOAD_ARGS,
    SpecError,
    WorkloadSpec,
    as_int,
    as_number,
    check_keys,
    did_you_mean,
)

_FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(StabilityConfig)}
"""StabilityConfig field -> its annotation (``float``, ``int``, ``str`` or ``bool``)."""


# ------------------------------------------------------------------ workload registry
def factory_args(factory: Any) -> tuple[str, ...] | None:
    """The argument names a factory takes (seed and device aside); None if it takes any."""
    factory = getattr(factory, "factory", factory)
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.name not in RESERVED_WORKLOAD_ARGS and p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


def check_arg(path: str, workload: str, arg: str, arg_names: tuple[str, ...] | None) -> None:
    if not NAME_RE.match(arg):
        raise SpecError(path, f"{arg!r} is not an argument name; use letters, digits and '_'")
    if arg in RESERVED_WORKLOAD_ARGS:
        raise SpecError(path, f"{arg} is set per trial by the sweep (the top-level seed, the "
                        "device a worker gets); remove it")
    if arg_names is not None and arg not in arg_names:
        raise SpecError(path, f"{workload} has no argument {arg!r}; valid: "
                        f"{', '.join(arg_names) or '(none)'}{did_you_mean(arg, arg_names)}")


def parse_workload(raw: Any, registry: Callable[[], Mapping[str, Any] | None]
                   ) -> tuple[WorkloadSpec, tuple[str, ...] | None]:
    """The ``workload:`` section. ``registry`` returns the built-in workloads (or None when
    they cannot be imported); it is called only for a built-in name."""
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        raise SpecError("workload", f"must be a mapping {{name: ..., args: {{...}}}} or a name; "
                        f"got {raw!r}")
    check_keys("workload", raw, ("name", "args"))
    name = raw.get("name")
    arg_names: tuple[str, ...] | None = None
    if not isinstance(name, str) or not name:
        raise SpecError("workload.name", f"must be a built-in name or package.module:factory; "
                        f"got {name!r}")
    if ":" in name:
        if not _FACTORY_RE.match(name):
            raise SpecError("workload.name", f"{name!r} is not package.module:factory; write "
                            "e.g. mypkg.workloads:make_workload")
    else:
        workloads = registry()
        names = sorted(workloads) if workloads is not None else list(BUILTIN_WORKLOAD_NAMES)
        if name not in names:
            raise SpecError("workload.name", f"unknown workload {name!r}"
                            f"{did_you_mean(name, names)}; built-ins are {', '.join(names)}, "
                            "or give package.module:factory")
        if workloads is not None:
            arg_names = factory_args(workloads[name])
    args = raw.get("args") or {}
    if not isinstance(args, Mapping):
        raise SpecError("workload.args", f"must be a mapping of argument -> value; got {args!r}")
    for key, value in args.items():
        check_arg(f"workload.args.{key}", name, str(key), arg_names)
        check_plain(f"workload.args.{key}", value)
    return WorkloadSpec(name=name, args=dict(args)), arg_names


def check_plain(path: str, value: Any) -> None:
    """Workload arguments must survive JSON (MLflow params, the study's attributes)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise SpecError(path, f"mapping keys must be text; got {key!r}")
            check_plain(f"{path}.{key}", item)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_plain(f"{path}[{i}]", item)
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise SpecError(path, f"must be text, a number, true/false, a list or a mapping; got "
                        f"{value!r} ({type(value).__name__}); quote it")
    elif isinstance(value, float) and not math.isfinite(value):
        raise SpecError(path, f"must be finite; got {value!r}")


# ------------------------------------------------------------------ StabilityConfig
def config_value(path: str, name: str, value: Any) -> Any:
    """Coerce a value for StabilityConfig field ``name`` (numbers from YAML text, int->float)."""
    kind = FIELD_TYPES[name]
    if kind == "float":
        return float(as_number(path, value))
    if kind == "int":
        return as_int(path, value)
    return value


def _config_error(path: str, exc: ConfigError, fixed: Mapping[str, Any], name: str) -> SpecError:
    message = str(exc).rstrip(".")
    if exc.field is not None and exc.field != name and exc.field in fixed:
        return SpecError(path, f"clashes with fixed.{exc.field}: {message}")
    return SpecError(path, message)


def parse_fixed(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError("fixed", f"must be a mapping of StabilityConfig field -> value; got "
                        f"{raw!r}")
    fixed: dict[str, Any] = {}
    for name, value in raw.items():
        path = f"fixed.{name}"
        if isinstance(name, str) and name.startswith("workload."):
            raise SpecError(path, f"fixed workload arguments go under workload.args.{name[9:]}")
        if name not in FIELD_TYPES:
            hint = did_you_mean(str(name), FIELD_TYPES)
            raise SpecError(path, f"not a StabilityConfig field{hint}; valid: "
                            f"{', '.join(FIELD_TYPES)}")
        fixed[name] = config_value(path, name, value)
    try:
        StabilityConfig(**fixed)
    except ConfigError as exc:
        raise SpecError(f"fixed.{exc.field}" if exc.field in fixed else "fixed",
                        str(exc).rstrip(".")) from None
    return fixed


def check_targets(space: dict[str, Param], fixed: Mapping[str, Any], workload: WorkloadSpec,
                   arg_names: tuple[str, ...] | None) -> dict[str, Param]:
    """Each param names a StabilityConfig field (values valid for it) or a workload argument."""
    out: dict[str, Param] = {}
    for name, param in space.items():
        path = f"space.{name}"
        if name.startswith("workload."):
            arg = name[len("workload."):]
            check_arg(path, workload.name, arg, arg_names)
            if arg in workload.args:
                raise SpecError(path, f"also fixed under workload.args.{arg}; an argument is "
                                "either fixed or searched, remove one")
            out[name] = param
            continue
        if name not in FIELD_TYPES:
            raise SpecError(path, "not a StabilityConfig field or workload argument"
                            f"{did_you_mean(name, FIELD_TYPES)}; valid: "
                            f"{', '.join(FIELD_TYPES)}, or workload.<argument>")
        if name in fixed:
            raise SpecError(path, f"also set under fixed.{name}; a field is either fixed or "
                            "searched, remove one")
        kind = FIELD_TYPES[name]
        if kind in ("str", "bool") and not isinstance(param, CategoricalParam):
            choices = StabilityConfig._CHOICES.get(name, (False, True))
            raise SpecError(f"{path}.type", f"{name} is not a number; use type: categorical "
                            f"with choices from {', '.join(map(str, choices))}")
        if kind == "int" and param.to_dict()["type"] == "float":
            raise SpecError(f"{path}.type", f"{name} is an integer field; use type: int")
        if isinstance(param, CategoricalParam):
            choices = tuple(config_value(f"{path}.choices", name, c) for c in param.choices)
            param = dataclasses.replace(param, choices=choices)
            checks: list[tuple[str, Any]] = [(f"{path}.choices", c) for c in choices]
        else:
            checks = [(f"{path}.low", param.low), (f"{path}.high", param.high)]
        for where, value in checks:
            try:
                StabilityConfig(**{**fixed, name: value})
            except ConfigError as exc:
                raise _config_error(where, exc, fixed, name) from None
        out[name] = param
    return out


def check_combinations(space: Mapping[str, Param], fixed: Mapping[str, Any]) -> None:
    """fixed + the low (then high) end of every range, with each categorical choice in turn."""
    fields = {n: p for n, p in space.items() if not n.startswith("workload.")}
    cats = {n: p for n, p in fields.items() if isinstance(p, CategoricalParam)}
    firsts = {n: p.choices[0] for n, p in cats.items()}
    for end in ("low", "high"):
        ends = {n: getattr(p, end) for n, p in fields.items() if n not in cats}
        variants: list[tuple[str | None, Any]] = [
            (n, c) for n, p in cats.items() for c in p.choices] or [(None, None)]
        for cat, choice in variants:
            values = {**fixed, **firsts, **ends, **({cat: choice} if cat else {})}
            try:
                StabilityConfig(**values)
            except ConfigError as exc:
                message = str(exc).rstrip(".")
                lead = exc.field or ""
                path = f"space.{lead}" if lead in space else (
                    f"fixed.{lead}" if lead in fixed else "space")
                combo = ", ".join(f"{n}={values[n]!r}" for n in fields)
                raise SpecError(path, f"the combination {combo} is not a valid StabilityConfig: "
                                f"{message}; narrow the range or fix the clashing field") from None
