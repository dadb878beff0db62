"""Find a workload by name (built-in) or by ``package.module:factory`` (a user's), and build it.

Every failure is a one-line :class:`WorkloadError` that names the workload and the cause.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from torch import nn

from stability.workloads.base import PROTOCOL_METHODS, Workload, WorkloadError, WorkloadFactory
from stability.workloads.cnn_digits import cnn_digits
from stability.workloads.deep_mlp import deep_mlp
from stability.workloads.rnn_adding import rnn_adding
from stability.workloads.transformer_lm import transformer_lm

__all__ = ["BUILTIN_WORKLOADS", "describe_workloads", "find_factory", "load_workload"]

BUILTIN_WORKLOADS: dict[str, WorkloadFactory] = {
    "rnn_adding": rnn_adding,
    "deep_mlp": deep_mlp,
    "transformer_lm": transformer_lm,
    "cnn_digits": cnn_digits,
}

_COMMON_ARGS = ("seed", "device")
_FORM = "'package.module:factory'"


def describe_workloads() -> list[dict[str, Any]]:
    """Built-in workloads: ``name``, one-line ``description`` and ``arguments``.

    ``arguments`` maps each workload-specific argument to its default (``seed`` and ``device``
    are taken by every workload and left out).
    """
    rows = []
    for name, factory in BUILTIN_WORKLOADS.items():
        doc = inspect.getdoc(factory) or ""
        rows.append({
            "name": name,
            "description": doc.splitlines()[0] if doc else "",
            "arguments": {
                arg: param.default
                for arg, param in inspect.signature(factory).parameters.items()
                if arg not in _COMMON_ARGS and param.kind is param.POSITIONAL_OR_KEYWORD
            },
        })
    return rows


def find_factory(spec: str) -> WorkloadFactory:
    """The factory of workload ``spec`` (a built-in name or ``package.module:factory``),
    imported but not called; a name that cannot be found raises :class:`WorkloadError`."""
    if isinstance(spec, str) and ":" in spec:
        return _import_factory(spec.strip())
    name = spec.strip() if isinstance(spec, str) else spec
    if name not in BUILTIN_WORKLOADS:
        _load_builtin(name, 0, "cpu", {})  # raises the one-line unknown-workload error
    return BUILTIN_WORKLOADS[name]


def load_workload(
    spec: str, *, seed: int = 0, device: str | torch.device = "cpu", **kwargs: Any
) -> Workload:
    """Build the workload ``spec`` (a built-in name or ``package.module:factory``) for a seed.

    ``kwargs`` go to the factory. A user's factory is called as
    ``factory(seed=seed, device=device, **kwargs)``; what it returns must have a ``name`` and
    the methods ``model()``, ``batches()``, ``loss()``, ``evaluate()``, and its ``model()``
    must return an ``nn.Module``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise WorkloadError(
            f"workload must be a built-in name ({', '.join(BUILTIN_WORKLOADS)}) or {_FORM}; "
            f"got {spec!r}."
        )
    spec = spec.strip()
    if ":" not in spec:
        return _load_builtin(spec, seed, device, kwargs)
    factory = _import_factory(spec)
    _check_arguments(spec, factory, {"seed": seed, "device": device, **kwargs})
    workload = _call(spec, factory, seed, device, kwargs)
    _check_protocol(spec, workload)
    return workload


def _load_builtin(name: str, seed: int, device: Any, kwargs: dict[str, Any]) -> Workload:
    factory = BUILTIN_WORKLOADS.get(name)
    if factory is None:
        hint = ""
        if "." in name:
            module, _, attr = name.rpartition(".")
            hint = f" (for a factory in a module write '{module}:{attr}')"
        raise WorkloadError(
            f"unknown workload {name!r}{hint}; built-in workloads: "
            f"{', '.join(BUILTIN_WORKLOADS)}; or give your own as {_FORM}."
        )
    valid = [a for a in inspect.signature(factory).parameters if a not in _COMMON_ARGS]
    for arg in kwargs:
        if arg not in valid:
            raise WorkloadError(
                f"workload {name!r} has no argument {arg!r}; valid arguments: "
                f"{', '.join(valid)} (plus seed and device)."
            )
    return factory(seed=seed, device=device, **kwargs)


def _import_factory(spec: str) -> WorkloadFactory:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise WorkloadError(
            f"workload {spec!r} must have the form {_FORM}, e.g. 'mypkg.workloads:make'."
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise WorkloadError(f"workload {spec!r} could not be imported: {exc}"
                            f"{_import_hint(module_name, exc)}") from exc
    except Exception as exc:
        raise WorkloadError(
            f"workload {spec!r} could not be imported: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise WorkloadError(
                f"workload {spec!r}: module {module_name!r} has no attribute {attr_path!r}."
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise WorkloadError(
            f"workload {spec!r}: {attr_path!r} is a {type(obj).__name__}, not callable; it must "
            "be a factory(seed=0, device='cpu', **kwargs) that returns a workload."
        )
    return obj


def _import_hint(module_name: str, exc: ModuleNotFoundError) -> str:
    """How to make ``module_name`` importable, when it (or its package) is what is missing."""
    missing = exc.name or ""
    if missing and not (module_name == missing or module_name.startswith(missing + ".")):
        return f"; {module_name!r} imports {missing!r}: install it in this environment."
    top = module_name.split(".")[0]
    return (f"; {top!r} is looked up on sys.path: run from the folder that holds {top}.py (or "
            f"the {top}/ package), add that folder to PYTHONPATH, or pip install -e your "
            "project (the sweep's Ray workers inherit the same path).")


def _check_arguments(spec: str, factory: WorkloadFactory, arguments: dict[str, Any]) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # no signature to read (some builtins, C extensions): the call will tell
    try:
        signature.bind(**arguments)
    except TypeError as exc:
        raise WorkloadError(
            f"workload {spec!r} rejects the arguments {sorted(arguments)}: {exc}; a factory "
            "must accept seed and device as keywords, plus the workload's own arguments."
        ) from exc


def _call(
    spec: str, factory: WorkloadFactory, seed: int, device: Any, kwargs: dict[str, Any]
) -> Any:
    try:
        return factory(seed=seed, device=device, **kwargs)
    except Exception as exc:
        raise WorkloadError(f"workload {spec!r} raised {type(exc).__name__}: {exc}") from exc


def _check_protocol(spec: str, workload: Any) -> None:
    missing = [f"{m}()" for m in PROTOCOL_METHODS if not callable(getattr(workload, m, None))]
    kind = type(workload).__name__
    if missing:
        raise WorkloadError(
            f"workload {spec!r} returned {kind}, which lacks {', '.join(missing)}."
        )
    name = getattr(workload, "name", None)
    if not isinstance(name, str) or not name:
        raise WorkloadError(
            f"workload {spec!r} returned {kind}, whose name is {name!r}; give it a non-empty "
            "str attribute 'name'."
        )
    try:
        model = workload.model()
    except Exception as exc:
        raise WorkloadError(
            f"workload {spec!r}: model() raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise WorkloadError(
            f"workload {spec!r}: model() returned {type(model).__name__}; it must return a "
            "torch.nn.Module."
        )
