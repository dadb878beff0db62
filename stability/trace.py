"""The trace: one row per optimizer step, written by the guard, read by everyone else.

A trace is a DataFrame with ``step``, ``loss``, ``grad_norm`` (global, pre-clip), ``lr``,
``clip_coef``, ``clip_threshold``, ``amp_scale``, ``overflow`` (fp16: the scaler found inf/NaN),
``nonfinite`` (gradient tensors holding inf/NaN), ``skipped`` (the update of this step was not
applied) and one ``grad_norm/<layer>`` column per layer, in layer order. This module owns those
names and the row layout of the guard's device buffer, so no other file spells them out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

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


def columns_for(names: Iterable[str]) -> tuple[str, ...]:
    """The per-layer column names for these layers."""
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


def layer_columns(trace: pd.DataFrame) -> list[str]:
    """The ``grad_norm/<layer>`` columns of a trace, in layer order."""
    return [str(c) for c in trace.columns if is_layer_column(c)]


def validated(trace: pd.DataFrame) -> pd.DataFrame:
    """A trace sorted by step with every optional column present (defaults filled in).

    Raises TypeError for a non-DataFrame and ValueError naming a missing required column.
    """
    import numpy as np
    import pandas as pd

    if not isinstance(trace, pd.DataFrame):
        raise TypeError(f"trace must be a pandas DataFrame; got {type(trace).__name__}.")
    check_columns(list(trace.columns))
    frame = trace.sort_values("step", kind="stable").reset_index(drop=True)
    for name, default in DEFAULTS.items():
        if name not in frame.columns:
            frame[name] = default
    frame["overflow"] = frame["overflow"].fillna(False).astype(bool)
    frame["skipped"] = frame["skipped"].fillna(False).astype(bool)
    frame["nonfinite"] = frame["nonfinite"].fillna(0).astype(np.int64)
    return frame
