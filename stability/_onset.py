"""When and where an explosion started: the onset step and the first layer to blow up.

Onset: a hinge fit (flat, then linear growth of the log-norm) up to the verdict gives the
kink; a robust band (median + 3 MAD-sigmas of the pre-kink log-norms) gives the last step
still inside the healthy band, walking back from the verdict. The onset is that step, or the
kink when the fit is clear and earlier (a slow explosion leaves the band late).

Norms are analysed in log space (their noise is multiplicative); a non-finite value is NaN
there (:func:`log_or_nan`). :func:`ended_badly` says whether a trace without a verdict needs
one.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from stability import trace as tr

__all__ = ["ended_badly", "first_layer", "log_or_nan", "onset_index"]

_HINGE_SPAN = 2000  # steps before the verdict searched for the kink
_REF_SPAN = 200  # pre-onset steps that define the healthy band
_BAND_Z, _BAND_FLOOR = 3.0, 0.1  # band: median + max(3 sigma, 10 %) in log space


def log_or_nan(values: np.ndarray) -> np.ndarray:
    """``log(values)``, NaN wherever that is not finite (a zero, negative, inf or NaN value)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(values)
    out[~np.isfinite(out)] = np.nan
    return out


def ended_badly(loss: np.ndarray, norm: np.ndarray) -> bool:
    """The trace ends non-finite, with its loss still above 10x the initial loss, or with its
    grad norm still above 100x the run's median norm."""
    if not (math.isfinite(loss[-1]) and math.isfinite(norm[-1])):
        return True
    head, tail = loss[:10], loss[-10:]
    head, tail = head[np.isfinite(head)], tail[np.isfinite(tail)]
    if head.size and tail.size and np.median(head) > 0 and tail.mean() > 10 * np.median(head):
        return True
    finite = norm[np.isfinite(norm)]
    return bool(finite.size and np.median(norm[-10:]) > 100.0 * np.median(finite))


def _hinge(x: np.ndarray, y: np.ndarray) -> tuple[int | None, float]:
    """Kink index of ``y = a + b max(0, x - x_k)`` (b > 0) by least squares, and its F ratio."""
    m = x.size
    if m < 8:
        return None, 0.0
    x = x - x[0]
    rev = slice(None, None, -1)
    # suffix sums over j > k
    c = np.concatenate((np.cumsum(np.ones(m))[rev][1:], [0.0]))
    s1, s2, sy, sxy = (np.concatenate((np.cumsum(v[rev])[rev][1:], [0.0]))
                       for v in (x, x * x, y, x * y))
    sh = s1 - x * c
    shh = s2 - 2 * x * s1 + x * x * c
    shy = sxy - x * sy
    var_h = shh - sh * sh / m
    cov = shy - sh * y.sum() / m
    ok = np.zeros(m, dtype=bool)
    ok[4:m - 2] = True  # at least 5 points flat and 2 growing
    ok &= (var_h > 1e-9) & (cov > 0)
    if not ok.any():
        return None, 0.0
    gain = np.where(ok, cov * cov / np.where(ok, var_h, 1.0), -np.inf)
    k = int(np.argmax(gain))
    sse = float(((y - y.mean()) ** 2).sum() - gain[k])
    return k, float(gain[k] / max(sse / (m - 3), 1e-12))


def _band_top(logs: np.ndarray) -> float:
    med = float(np.median(logs))
    sigma = 1.4826 * float(np.median(np.abs(logs - med)))
    return med + max(_BAND_Z * sigma, _BAND_FLOOR)


def _last_in_band(logs: np.ndarray, skip: np.ndarray, v: int, lo: int, ref_end: int
                  ) -> tuple[int, float] | None:
    """Walk back from ``v`` to the last step inside the band of ``logs[lo:ref_end]``."""
    ref = logs[max(lo, ref_end - _REF_SPAN):ref_end]
    ref = ref[np.isfinite(ref)]
    if ref.size < 5:
        return None
    top = _band_top(ref)
    i = v
    while i > lo and (skip[i] or not logs[i] <= top):  # NaN (non-finite) is out of band
        i -= 1
    return i, top


def _onset(logs: np.ndarray, skip: np.ndarray, v: int) -> int:
    lo = max(0, v - _HINGE_SPAN)
    usable = np.flatnonzero(np.isfinite(logs[lo:v + 1]) & ~skip[lo:v + 1]) + lo
    k, f_ratio = _hinge(usable.astype(np.float64), logs[usable])
    kink = int(usable[k]) if k is not None and f_ratio > 20.0 else None
    found = _last_in_band(logs, skip, v, lo, kink if kink is not None else v)
    if found is None:
        return kink if kink is not None else v
    walked, top = found
    if kink is None or not 3 <= walked - kink <= 2 * (v - walked) + 10:
        return walked
    # the kink wins when the norm already rose inside the band between kink and walked: a
    # slow explosion; a sudden jump is flat there and keeps its last in-band step
    span = np.flatnonzero(np.isfinite(logs[kink:walked + 1]) & ~skip[kink:walked + 1]) + kink
    slope = float(np.polyfit(span.astype(np.float64), logs[span], 1)[0])
    band = top - float(np.median(logs[max(lo, kink - _REF_SPAN):kink][
        np.isfinite(logs[max(lo, kink - _REF_SPAN):kink])]))
    return kink if slope * (walked - kink) >= 0.5 * band else walked


def _first_above_band(frame: pd.DataFrame, layers: list[str], skip: np.ndarray, onset: int,
                 v: int) -> str | None:
    """The layer whose trailing above-band run began first (largest rise breaks ties)."""
    best: tuple[int, float] | None = None
    name = None
    lo = max(0, onset - _REF_SPAN)
    for col in layers:
        logs = log_or_nan(frame[col].to_numpy(np.float64))
        ref = logs[lo:onset][np.isfinite(logs[lo:onset]) & ~skip[lo:onset]]
        if ref.size < 5:
            continue
        top, med = _band_top(ref), float(np.median(ref))
        if skip[v] or logs[v] <= top:
            continue  # back inside its band at the verdict: not blowing up
        i = v
        while i > lo and (skip[i - 1] or not logs[i - 1] <= top):
            i -= 1
        rise = logs[i] - med if np.isfinite(logs[i]) else math.inf
        key = (i, -rise)
        if best is None or key < best:
            best, name = key, col.removeprefix(tr.LAYER_PREFIX)
    return name


def _largest_rise(frame: pd.DataFrame, layers: list[str], onset: int, v: int) -> str | None:
    """Fallback when no layer has a band (an explosion in the first steps, or every layer
    back in its band at the verdict): the first layer to turn non-finite up to the verdict,
    else the layer whose norm rose most from before the onset (step 0 when nothing precedes
    it) to the verdict."""
    if not layers:
        return None
    values = frame[layers].to_numpy(np.float64)[:v + 1]
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        return layers[int(np.flatnonzero(bad[row])[0])].removeprefix(tr.LAYER_PREFIX)
    logs = np.log(np.maximum(values, 1e-30))
    lo = max(0, onset - _REF_SPAN)
    ref = np.median(logs[lo:onset], axis=0) if onset > lo else logs[0]
    rise = logs[-1] - ref
    if v == 0 or not np.isfinite(rise).any() or np.nanmax(rise) <= 0:
        return layers[int(np.argmax(logs[-1]))].removeprefix(tr.LAYER_PREFIX)
    return layers[int(np.nanargmax(rise))].removeprefix(tr.LAYER_PREFIX)


def onset_index(logs: np.ndarray, loss: np.ndarray, skip: np.ndarray, v: int,
                verdict_kind: str) -> int:
    """Row of the onset, given the log-norms and the verdict's row ``v``; a loss divergence
    without a norm onset falls back to the last step of the loss inside its band."""
    onset = _onset(logs, skip, v)
    if onset == v and verdict_kind == "loss_divergence":
        found = _last_in_band(log_or_nan(loss), skip, v, max(0, v - _HINGE_SPAN), v)
        onset = found[0] if found is not None else v
    return onset


def first_layer(frame: pd.DataFrame, layers: list[str], skip: np.ndarray, onset: int,
                v: int) -> str | None:
    """The first layer to leave its band before the verdict, else the one that rose most."""
    return (_first_above_band(frame, layers, skip, onset, v)
            or _largest_rise(frame, layers, onset, v))
