"""Trace -> what happened: onset, first layer to blow up, growth rate, loss impact, the fix.

The trace is the guard's step table: ``step, loss, grad_norm (pre-clip), lr, clip_coef,
clip_threshold, amp_scale, overflow, nonfinite`` and one ``grad_norm/<layer>`` column per
layer, in layer order. Norms are analysed in log space (their noise is multiplicative).

The analysis steps live beside this module: :mod:`stability._onset` (onset and first layer),
:mod:`stability._advice` (the fixes) and :mod:`stability._diagnosis` (the result records);
their public names are exported from here.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from stability import trace as tr
from stability._advice import suggest
from stability._diagnosis import Diagnosis, Suggestion
from stability._onset import ended_badly, first_layer, log_or_nan, onset_index
from stability.config import StabilityConfig
from stability.records import Verdict

__all__ = ["Diagnosis", "Suggestion", "diagnose", "layer_columns", "suggest"]

_LOSS_WINDOW = 50  # steps averaged for loss_before

_validated = tr.validated
layer_columns = tr.layer_columns


def diagnose(trace: pd.DataFrame, verdict: Verdict | None = None,
             config: StabilityConfig | None = None) -> Diagnosis:
    """Find the onset, first layer, growth rate and loss impact; suggest fixes, best first.

    Without a verdict, a trace that ends badly (non-finite last step, or a final loss above
    10x the initial loss) is replayed through the default detectors (a loss above 10x its
    first value is one of their rules) to find where it exploded. A trace that ends well is
    healthy: a transient that the run recovered from is not an explosion.
    """
    frame = _validated(trace)
    n = len(frame)
    if n == 0:
        return Diagnosis(exploded=False)
    layers = layer_columns(frame)
    steps = frame["step"].to_numpy(np.int64)
    norm = frame["grad_norm"].to_numpy(np.float64)
    loss = frame["loss"].to_numpy(np.float64)
    skip = frame["overflow"].to_numpy(bool)
    logs = log_or_nan(norm)
    finite = np.isfinite(norm) & ~skip
    diag = Diagnosis(exploded=False, steps=n, overflow_count=int(skip.sum()))
    if finite.any():
        i = int(np.argmax(np.where(finite, norm, -np.inf)))
        diag.max_norm, diag.max_norm_step = float(norm[i]), int(steps[i])
    if verdict is None and ended_badly(loss, norm):
        from stability.detectors import default_detector, replay

        verdict = replay(default_detector(), frame)  # the first verdict the guard would give
    if verdict is None:
        if finite.any():
            diag.pre_onset_norm_p90 = float(np.percentile(norm[finite], 90))
        return diag

    v = int(np.clip(np.searchsorted(steps, verdict.step, side="right") - 1, 0, n - 1))
    onset = onset_index(logs, loss, skip, v, verdict.kind)
    pre = finite.copy()
    pre[onset:] = False
    grow = np.flatnonzero(np.isfinite(logs[onset:v + 1]) & ~skip[onset:v + 1]) + onset
    before = loss[max(0, onset - _LOSS_WINDOW):onset]
    before = before[np.isfinite(before)]
    diag.exploded = True
    diag.verdict = verdict
    diag.onset_step, diag.verdict_step = int(steps[onset]), int(verdict.step)
    diag.verdict_kind = verdict.kind
    diag.first_layer = first_layer(frame, layers, skip, onset, v) or verdict.layer
    if grow.size >= 2:
        slope = float(np.polyfit(steps[grow].astype(np.float64), logs[grow], 1)[0])
        diag.growth_rate = math.exp(slope)
    diag.loss_before = float(before.mean()) if before.size else None
    diag.loss_after = float(loss[v])
    diag.lr_at_onset = float(frame["lr"].iloc[onset])
    if pre.sum() >= 5:
        diag.pre_onset_norm_p90 = float(np.percentile(norm[pre], 90))
    diag.suggestions = suggest(diag, frame, config)
    return diag

