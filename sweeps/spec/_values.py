"""The bottom of the spec layer: its error, value helpers and small value types.

Everything here is plain: no imports from the rest of ``sweeps``. :mod:`space` (params),
:mod:`samplers` (sampler and pruner sections), :mod:`_checks` (checks
against StabilityConfig and the workload registry) and :mod:`sweeps.spec` (the whole file,
on top) build on it.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

BUILTIN_WORKLOAD_NAMES = ("cnn_digits", "deep_mlp", "rnn_adding", "transformer_lm")
"""Used when ``stability.workloads`` cannot be imported (its registry wins when it can)."""
RESERVED_WORKLOAD_ARGS = ("seed", "device")
"""Set per trial by the sweep (``seed``) and by the CLI (``--device``), never in a spec."""

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class SpecError(ValueError):
    """A sweep spec is invalid. ``str(err)`` is one line: ``<field path>: <problem and fix>``.

    ``path`` is the dotted field path (or the file name for file-level errors), ``problem``
    the rest, ``source`` the file (or ``<spec>``) the spec came from.
    """

    def __init__(self, path: str, problem: str, *, source: str | None = None) -> None:
        self.path = path
        self.problem = " ".join(problem.split())
        self.source = source
        super().__init__(f"{path}: {self.problem}")

    @property
    def field(self) -> str:
        """The dotted field path the error is about (``space.lr.low``)."""
        return self.path


# ------------------------------------------------------------------ value helpers
def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def as_number(path: str, value: Any) -> float | int:
    """A finite int/float; a numeric string is accepted because YAML 1.1 reads ``1e-4`` as text."""
    if isinstance(value, str) and FLOAT_RE.match(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(path, f"must be a number; got {value!r}")
    if not math.isfinite(value):
        raise SpecError(path, f"must be finite; got {value!r}")
    return value


def as_int(path: str, value: Any, *, minimum: int | None = None) -> int:
    """An integer (``10.0`` accepted); with ``minimum``, also ``>= minimum``."""
    what = "an integer" if minimum is None else f"an integer >= {minimum}"
    if isinstance(value, str) and FLOAT_RE.match(value.strip()):
        value = float(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or (
            minimum is not None and value < minimum):
        raise SpecError(path, f"must be {what}; got {value!r}")
    return value


def as_bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(path, f"must be true or false; got {value!r}")
    return value


def check_keys(path: str, data: Mapping[Any, Any], valid: Iterable[str]) -> None:
    """Refuse a key that is not in ``valid``, naming it and the valid keys."""
    valid = list(valid)
    for key in data:
        if key not in valid:
            where = f"{path}.{key}" if path else str(key)
            raise SpecError(where, f"unknown key; valid keys: {', '.join(valid)}"
                            f"{did_you_mean(str(key), valid)}")


# ------------------------------------------------------------------ small spec values
@dataclass(frozen=True, kw_only=True, slots=True)
class WorkloadSpec:
    name: str
    """a built-in workload name, or ``package.module:factory``."""
    args: dict[str, Any] = field(default_factory=dict)
    """fixed factory arguments; searched ones are ``workload.<arg>`` params of the space."""

    @property
    def builtin(self) -> bool:
        return ":" not in self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(self.args)}


@dataclass(frozen=True, kw_only=True, slots=True)
class ObjectiveSpec:
    metric: str = "eval_loss"
    direction: str = "minimize"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "direction": self.direction}


@dataclass(frozen=True, kw_only=True, slots=True)
class NamedSpec:
    """A sampler or pruner: its name and the options given in the spec (defaults not filled)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


def fmt(value: Any) -> str:
    """A spec value as a message shows it: strings quoted."""
    return repr(value) if isinstance(value, str) else str(value)


def same(a: Any, b: Any) -> bool:
    """Equal as spec values: True == 1 in Python, but a categorical choice keeps its type."""
    return (type(a) is type(b) and a == b) or (
        isinstance(a, int | float) and isinstance(b, int | float)
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b)
