"""The trace: one row per optimizer step, written by the guard, read by everyone else.

A trace is a DataFrame with ``step``, ``loss``, ``grad_norm`` (global, pre-clip), ``lr``,
``clip_coef``, ``clip_threshold``, ``amp_scale``, ``overflow`` (fp16: the scaler found inf/NaN),
``nonfinite`` (gradient tensors holding inf/NaN), ``skipped`` (the update of this step was not
applied) and one ``grad_norm/<layer>`` column per layer, in layer order. This module owns those
names and the row layout of the guard's device buffer, so no other file spells them out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

LAYER_PREFIX = "grad_norm/"
"""prefix of the per-layer norm columns: ``grad_norm/<layer>``."""

ROW = ("loss", "grad_norm", "clip_coef", "clip_threshold", "amp_scale", "overflow",
       "nonfinite", "skipped")
"""The fixed part of the guard's device row, in order; the per-layer norms follow."""
N_ROW = len(ROW)
COL = {name: i for i, name in enumerate(ROW)}
"""index of each fixed column in a device row."""

DEFAULTS: dict[str, object] = {"lr": 0.0, "clip_coef": 1.0, "clip_threshold": float("nan"),
                               "amp_scale": 1.0, "overflow": False, "nonfinite": 0,
                               "skipped": False}
"""values of the optional columns when a trace (e.g. an older one) lacks them."""
REQUIRED = ("step", "loss", "grad_norm")


def layer_column(layer: str) -> str:
    return f"{LAYER_PREFIX}{layer}"


def layer_columns(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(layer_column(n) for n in names)


def is_layer_column(column: object) -> bool:
    return str(column).startswith(LAYER_PREFIX)


def layer_of(column: object) -> str:
    """``grad_norm/<layer>`` -> ``<layer>``."""
    return str(column)[len(LAYER_PREFIX):]


def check_columns(columns: Sequence[object]) -> None:
    """Raise ValueError naming the first required column a trace lacks."""
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ValueError(f"trace is missing column {missing[0]!r} (required: "
                         f"{', '.join(REQUIRED)}); columns present: {list(columns)}.")
