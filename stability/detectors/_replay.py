"""Replay detectors over a recorded trace (the guard's step table) instead of a live run."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from stability import trace as tr
from stability.detectors._base import Detector
from stability.records import StepRecord, Verdict

if TYPE_CHECKING:
    import pandas as pd

def records_from_trace(trace: pd.DataFrame) -> list[StepRecord]:
    """One :class:`StepRecord` per trace row, as the guard built them at each host sync.

    Needs ``step``, ``loss`` and ``grad_norm``; the other columns of :mod:`stability.trace`
    take their defaults when absent. ``grad_norm/<layer>`` columns become the layer norms.
    """
    tr.check_columns(list(trace.columns))
    layers = [c for c in trace.columns if tr.is_layer_column(c)]
    names = tuple(tr.layer_of(c) for c in layers)
    n = len(trace)
    matrix = (trace[layers].to_numpy(np.float64) if layers else np.zeros((n, 0)))

    def column(name: str) -> np.ndarray:
        default = tr.DEFAULTS[name]
        if name not in trace.columns:
            return np.full(n, default)
        return trace[name].fillna(default).to_numpy()

    steps = trace["step"].to_numpy(np.int64)
    loss = trace["loss"].to_numpy(np.float64)
    norm = trace["grad_norm"].to_numpy(np.float64)
    lr, overflow, nonfinite = column("lr"), column("overflow"), column("nonfinite")
    skipped = column("skipped")
    return [StepRecord(step=int(steps[i]), loss=float(loss[i]), global_norm=float(norm[i]),
                       layer_norms=matrix[i], layer_names=names, lr=float(lr[i]),
                       overflow=bool(overflow[i]), nonfinite=int(nonfinite[i]),
                       skipped=bool(skipped[i]))
            for i in range(n)]


def replay(detector: Detector, trace: pd.DataFrame | Iterable[StepRecord], *,
           reset: bool = True) -> Verdict | None:
    """The first verdict ``detector`` gives over a trace (or records), as the guard would.

    With ``reset`` (the default) the detector forgets any earlier run first.
    """
    records = records_from_trace(trace) if hasattr(trace, "columns") else trace
    if reset:
        detector.reset()
    for record in records:
        verdict = detector.observe(record.step, record)
        if verdict is not None:
            return verdict
    return None
