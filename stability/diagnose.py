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
from stability._advice import suggest, suggest_for_stall
from stability._diagnosis import Diagnosis, Suggestion
from stability._onset import ended_badly, first_layer, log_or_nan, onset_index
from stability.config import StabilityConfig
from stability.records import Verdict

__all__ = ["Diagnosis", "Suggestion", "diagnose", "layer_columns", "suggest"]

_LOSS_WINDOW = 50  # steps averaged for loss_before
NEVER_LEARNED_RATIO = 0.75
"""A run that did not explode *never learned* when its loss over the last quarter of its steps
(the median) is still above this fraction of where it started (the median of its first 5
losses), or of the constant-prediction ``baseline`` when one is given. Chosen by
``benchmarks/never_learned.py`` on the built-in families and scaled_mlp (the largest recall
with at most 2 % of the runs that learned called "never learned", the label being the eval
loss above 0.9x a constant prediction's): there 11 of 30 caught, 1 of 78 wrongly; on the five
held-out families 14 of 21 caught, 6 of 106 wrongly (5 of them attention runs that ended at
0.8x the constant's loss). Runs whose loss starts far above the constant prediction (a large
init) end far below their start however little they learned: only ``baseline`` finds them."""
_LATE = 0.25  # the last quarter of the steps: "after most of its steps"
_MIN_STEPS = 20  # fewer steps than this: too short to say a run did not learn

_validated = tr.validated
layer_columns = tr.layer_columns


def diagnose(trace: pd.DataFrame, verdict: Verdict | None = None,
             config: StabilityConfig | None = None, *,
             baseline: float | None = None) -> Diagnosis:
    """Find the onset, first layer, growth rate and loss impact; suggest fixes, best first.

    Without a verdict, a trace that ends badly (non-finite last step, or a final loss above
    10x the initial loss) is replayed through the default detectors (a loss above 10x its
    first value is one of their rules) to find where it exploded. A trace that ends well is
    not an explosion (a transient the run recovered from is not one): it is *never learned*
    when its loss over the last quarter stayed near its start, or near ``baseline`` (the loss
    of a constant prediction, when the caller knows it; see :data:`NEVER_LEARNED_RATIO`);
    *rescued* when updates were skipped on the way; else *healthy*.
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
        skipped = frame["skipped"].to_numpy(bool) & ~skip
        diag.skipped_count = int(skipped.sum())
        if skipped.any():
            diag.first_skipped_step = int(steps[int(np.argmax(skipped))])
        _stall(diag, steps, loss, norm, finite, baseline)
        if diag.never_learned:
            diag.suggestions = suggest_for_stall(diag, frame, config)
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



def stall_ratio(loss: np.ndarray, baseline: float | None = None) -> float:
    """The median loss of the last quarter of a run over its start (the median of its first 5
    losses), or over ``baseline`` when given: near 1, the run never got anywhere. NaN when
    the run is too short or either number is not finite and positive."""
    n = loss.size
    if n < _MIN_STEPS:
        return math.nan
    late = loss[n - max(1, int(_LATE * n)):]
    ref = float(np.median(loss[:5])) if baseline is None else float(baseline)
    if not (np.isfinite(late).all() and math.isfinite(ref) and ref > 0):
        return math.nan
    return float(np.median(late)) / ref


def _stall(diag: Diagnosis, steps: np.ndarray, loss: np.ndarray, norm: np.ndarray,
           finite: np.ndarray, baseline: float | None) -> None:
    """Fill in the never-learned evidence: the loss against its start (or the baseline), the
    step from which it stayed at its final level, the largest norm spike before that."""
    ratio = stall_ratio(loss, None)
    against = stall_ratio(loss, baseline) if baseline is not None else math.nan
    if not (ratio > NEVER_LEARNED_RATIO or against > NEVER_LEARNED_RATIO):
        return
    n = loss.size
    late = float(np.median(loss[n - max(1, int(_LATE * n)):]))
    diag.never_learned = True
    diag.loss_start, diag.loss_end = float(np.median(loss[:5])), late
    diag.loss_baseline = None if baseline is None else float(baseline)
    # stalled: the first step where the smoothed loss came within 10 % of its final level
    smooth = pd.Series(loss).rolling(9, min_periods=1).median().to_numpy()
    at = int(np.argmax(smooth <= 1.1 * late)) if (smooth <= 1.1 * late).any() else n - 1
    diag.stall_step = int(steps[at])
    if finite.sum() >= 5:
        med = float(np.median(norm[finite]))
        i = int(np.argmax(np.where(finite, norm, -np.inf)))
        if med > 0 and norm[i] >= 5.0 * med:  # a spike: 5x the run's median norm
            diag.spike_norm, diag.spike_step = float(norm[i]), int(steps[i])
            diag.spike_ratio = float(norm[i] / med)
