"""Draw a trial's plots from its spooled artifacts (the ``plots`` operation of the sink).

Whoever uploads the operation draws them, off the trial's critical path: a failure is noted in
the sink's errors and never stops the upload.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["render_plots"]


def render_plots(folder: Path, out: Path, op: dict[str, Any], errors: list[str]) -> bool:
    """``grad_norm_trace.png`` and ``layer_heatmap.png`` of a trial from its spooled
    ``trace.parquet`` and ``diagnosis.json`` (drawn here, off the trial's critical path)."""
    from types import SimpleNamespace

    import pandas as pd

    from stability.plots import plot_layer_heatmap, plot_trace
    from stability.records import Verdict
    from stability.trace import layer_columns

    try:
        trace = pd.read_parquet(folder / "trace.parquet")
        diag = json.loads((folder / "diagnosis.json").read_text())
    except Exception as exc:  # nothing to draw from: the run keeps its other artifacts
        errors.append(f"plots: {type(exc).__name__}: {exc}")
        return False
    verdict = Verdict(**op["verdict"]) if op.get("verdict") else None
    diagnosis = SimpleNamespace(onset_step=diag.get("onset_step"), verdict=verdict)
    drawn = False
    jobs = [("grad_norm_trace.png", lambda: plot_trace(
        trace, out / "grad_norm_trace.png", verdict=verdict, diagnosis=diagnosis,  # type: ignore[arg-type]
        title=op.get("title")))]
    if layer_columns(trace):
        jobs.append(("layer_heatmap.png", lambda: plot_layer_heatmap(
            trace, out / "layer_heatmap.png",
            title=f"trial {op.get('trial')}: per-layer gradient norm")))
    for name, job in jobs:
        try:
            job()
            drawn = True
        except Exception as exc:  # a plot that fails must not stop the upload
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    return drawn
