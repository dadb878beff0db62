"""Before a sweep creates anything: build its workload, each searched workload value and one
evaluation in the driver, and check the tracking server answers.

A bad workload, a searched argument value its factory refuses (a SpecError naming the field),
an objective metric the workload does not report, or an unreachable MLflow server fails here,
before any storage, MLflow run or file is created.
"""

from __future__ import annotations

import importlib
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow_setup.uri import redact, resolve_tracking_uri
from stability.workloads import WorkloadError, load_workload
from sweeps.common import SweepError
from sweeps.driver.options import RunOptions
from sweeps.spec import CategoricalParam, SpecError, SweepSpec

__all__ = ["check_tracking", "missing_factory", "preflight", "workload_arg_values"]


def preflight(spec: SweepSpec, options: RunOptions | None = None) -> None:
    """Build the workload, its model and one evaluation in the driver, build it again with
    every other value the space gives a workload argument, and check the tracking store
    answers: a bad workload, a searched argument value its factory refuses (SpecError naming
    the field), an objective metric the workload does not report, or an unreachable MLflow
    server fails here, before any storage or run is created."""
    base, variants = workload_arg_values(spec)
    try:
        workload = load_workload(spec.workload.name, seed=spec.seed, **base)
        metrics = workload.evaluate(workload.model())
    except WorkloadError as exc:
        _blame_first_value(spec, base, variants, exc)
        raise SweepError(_workload_problem(spec, str(exc))) from None
    except Exception as exc:
        raise SweepError(f"workload.name: workload {spec.workload.name!r} raised "
                         f"{type(exc).__name__} while building its model: {exc}") from None
    if spec.objective.metric not in metrics:
        raise SweepError(
            f"objective.metric: {spec.objective.metric!r} is not a metric workload "
            f"{spec.workload.name!r} reports; it reports {', '.join(sorted(metrics))}.")
    _check_searched_args(spec, base, variants)
    if options is not None and options.tracking:
        check_tracking(options.tracking_uri, options.workdir)


def workload_arg_values(spec: SweepSpec) -> tuple[dict[str, Any], list[tuple[str, str, Any]]]:
    """The workload arguments of a first trial (fixed ones, each searched one at its first
    choice or low end) and every other value a trial can give a searched argument, as
    ``(field path, argument, value)``: each categorical choice, each range's high end."""
    base = dict(spec.workload.args)
    variants: list[tuple[str, str, Any]] = []
    for name, param in spec.space.items():
        if not name.startswith("workload."):
            continue
        arg = name[len("workload."):]
        if isinstance(param, CategoricalParam):
            values = [(f"space.{name}.choices", c) for c in param.choices]
        else:
            values = [(f"space.{name}.low", param.low), (f"space.{name}.high", param.high)]
        base[arg] = values[0][1]
        variants += [(path, arg, value) for path, value in values[1:]]
    return base, variants


def _workload_problem(spec: SweepSpec, message: str) -> str:
    """A workload that could not be built, as one line naming the field at fault and the fix:
    the one fixed argument the message names (``workload.args.depth``), a factory missing from
    its module (with the module's callables), else ``workload.name``."""
    named = [arg for arg in spec.workload.args if re.search(rf"\b{re.escape(arg)}\b", message)]
    if len(named) == 1:
        return (f"workload.args.{named[0]}: {message.rstrip('.')}; fix workload.args."
                f"{named[0]} in the spec")
    return f"workload.name: {missing_factory(spec.workload.name, message) or message}"


def missing_factory(workload: str, message: str) -> str | None:
    """For a ``module:factory`` whose module lacks the factory (``message`` says "has no
    attribute"): what the module defines and how to name or define one; else None."""
    module_name, _, attr = workload.partition(":")
    if not attr or "has no attribute" not in message:
        return None
    try:
        module = importlib.import_module(module_name)
    except Exception:
        return None
    found = sorted(n for n, v in vars(module).items() if callable(v) and not
                   n.startswith("_") and getattr(v, "__module__", None) == module.__name__)
    return (f"{module_name!r} has no factory {attr!r}; name one it defines "
            f"({', '.join(found) or 'none'}) as {module_name}:<name>, or define "
            f"{attr}(seed=0, device='cpu', **args) in {module_name}")


def _blame_first_value(spec: SweepSpec, base: dict[str, Any],
                       variants: list[tuple[str, str, Any]], exc: Exception) -> None:
    """The first trial's workload failed to build: if another value of one searched argument
    builds, that argument's first value is the culprit; refuse it by its field path."""
    for path, arg, value in variants:
        try:
            load_workload(spec.workload.name, seed=spec.seed, **{**base, arg: value})
        except Exception:
            continue
        first = spec.space[f"workload.{arg}"]
        where = path if isinstance(first, CategoricalParam) else path.replace(".high", ".low")
        detail = str(exc).splitlines()[0].rstrip(".")
        raise SpecError(where, f"workload {spec.workload.name!r} rejects {arg}={base[arg]!r} "
                        f"({detail}); remove that value or fix the range",
                        source=spec.source) from None


def _check_searched_args(spec: SweepSpec, base: dict[str, Any],
                         variants: list[tuple[str, str, Any]]) -> None:
    """Build the workload once per searched value (the factory checks its arguments), so a
    value no trial could run is refused before the study, the MLflow store or any file is
    created; the first trial's values were built by :func:`preflight` already."""
    for path, arg, value in variants:
        try:
            load_workload(spec.workload.name, seed=spec.seed, **{**base, arg: value})
        except Exception as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, WorkloadError):
                detail = f"{type(exc).__name__}: {detail}"
            raise SpecError(path, f"workload {spec.workload.name!r} rejects {arg}={value!r} "
                            f"({detail.rstrip('.')}); remove that value or fix the range",
                            source=spec.source) from None


def check_tracking(tracking_uri: str | None, workdir: Path) -> None:
    """An http(s) tracking server must answer /health before the sweep starts (a server lost
    later is spooled instead)."""
    uri = resolve_tracking_uri(tracking_uri, workdir)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5):
            pass
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SweepError(
            f"tracking URI {redact(uri)}: the MLflow server does not answer ({reason}); start "
            "it (python -m mlflow_setup start), fix the URI, or run without tracking.",
            option="tracking") from None
