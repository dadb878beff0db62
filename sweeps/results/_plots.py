"""The figures of ``stabsweep report``: optimisation history, importances, stability map.

matplotlib (Agg) is imported inside each function. Each plot function saves a PNG, closes its
figure and returns the path; :func:`map_frame` chooses the stability map's axes or says why
there is no map.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from stability.config import StabilityConfig
from stability.plots import pyplot, save_figure
from sweeps.common import Outcome, keys
from sweeps.results._trials import PARAM_PREFIX, RATED_OUTCOMES

if TYPE_CHECKING:
    import optuna

    from sweeps.spec import SweepSpec

_DEFAULTS = StabilityConfig()
_THRESHOLD_METHODS = ("norm", "value")
"""Clip methods that use ``clip_threshold``."""


# ------------------------------------------------------------------ history
def plot_history(df: pd.DataFrame, path: Path, *, direction: str, metric: str,
                 title: str | None = None) -> Path:
    """Objective per trial number: complete trials, Optuna-pruned trials at their last
    reported value, exploded trials as red crosses along the top, failures along the bottom,
    and the best-so-far line over complete trials."""
    plt = pyplot()
    number = df["number"].to_numpy(np.float64)
    value = df["value"].to_numpy(np.float64)
    last = df["last_intermediate"].to_numpy(np.float64)
    complete = (df["state"] == "COMPLETE").to_numpy() & np.isfinite(value)
    slow = (df["outcome"] == Outcome.SLOW).to_numpy() & np.isfinite(last)
    exploded = df["exploded"].to_numpy(bool)
    failed = (df["state"] == "FAIL").to_numpy()
    shown = np.concatenate([value[complete], last[slow]])
    lo, hi = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 1.0)
    log = shown.size > 1 and lo > 0 and hi > 100 * lo
    if log:
        top, bottom = hi * 2.0, lo / 2.0
    else:
        pad = (hi - lo) * 0.08 or max(abs(hi), 1.0) * 0.1
        top, bottom = hi + pad, lo - pad
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.scatter(number[complete], value[complete], s=22, color="tab:blue", zorder=3,
               label="complete")
    if slow.any():
        ax.scatter(number[slow], last[slow], s=22, marker="v", color="tab:gray", zorder=3,
                   label="pruned (slow), last reported value")
    if exploded.any():
        ax.scatter(number[exploded], np.full(exploded.sum(), top), s=30, marker="x",
                   color="red", zorder=4, label="exploded (pruned)")
    if failed.any():
        ax.scatter(number[failed], np.full(failed.sum(), bottom), s=26, marker="1",
                   color="magenta", zorder=4, label="failed")
    if complete.any():
        order = np.argsort(number[complete])
        xs, ys = number[complete][order], value[complete][order]
        best = np.minimum.accumulate(ys) if direction == "minimize" else (
            np.maximum.accumulate(ys))
        end = max(float(number.max()), float(xs[-1]))
        ax.step(np.append(xs, end), np.append(best, best[-1]), where="post",
                color="tab:green", lw=1.5, label="best so far")
    if log:
        ax.set_yscale("log")
    margin = 0.05 * (top - bottom)
    ax.set_ylim((bottom * 0.8, top * 1.25) if log else (bottom - margin, top + margin))
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"{metric} ({direction})")
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title or f"optimisation history, {len(df)} trials", loc="left")
    return save_figure(fig, path)


# ------------------------------------------------------------------ importances
def plot_importances(importances: Mapping[str, float], path: Path, *, metric: str) -> Path:
    """Horizontal bars, most important on top."""
    plt = pyplot()
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(items) + 1.5))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlabel(f"importance for {metric} (fANOVA, complete trials)")
    ax.set_xlim(0, max([v for _, v in items] + [0.0]) * 1.15 or 1.0)
    ax.set_title("parameter importances", loc="left")
    return save_figure(fig, path)


# ------------------------------------------------------------------ stability map
class MapData(NamedTuple):
    frame: pd.DataFrame
    """columns x, y and ``exploded``, one row per trial."""
    x: str
    y: str
    note: str
    """trials left out and why (empty when none)."""


def positive_float_params(study: optuna.Study, spec: SweepSpec | None) -> list[str]:
    """Float params whose range is positive (log-scale axes), spec order first."""
    from optuna.distributions import FloatDistribution

    from sweeps.spec import FloatParam

    found: dict[str, None] = {}
    if spec is not None:
        found.update({n: None for n, p in spec.space.items()
                      if isinstance(p, FloatParam) and p.low > 0})
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        for name, dist in trial.distributions.items():
            if isinstance(dist, FloatDistribution) and dist.low > 0:
                found.setdefault(name, None)
    return list(found)


def map_frame(df: pd.DataFrame, study: optuna.Study, spec: SweepSpec | None) -> MapData | str:
    """The data for :func:`stability.plots.plot_stability_map`, or a note on why there is none.

    x is ``lr`` when searched, else the first positive float param. y is ``clip_threshold``
    when it or ``clip_method`` is searched: NaN (the "no clip" band) for a trial whose clip
    method is none; a trial clipping by a method without a threshold (agc, autoclip, zclip)
    has no y and is left out. Otherwise y is the next positive float param (trials where it
    was inactive are left out). Only complete, exploded and slow trials count.
    """
    floats = positive_float_params(study, spec)
    params = {c[len(PARAM_PREFIX):] for c in df.columns if str(c).startswith(PARAM_PREFIX)}
    if not floats:
        return "no stability map: the space has no float param with a positive range"
    x = "lr" if "lr" in floats else floats[0]
    rows = df[df["outcome"].isin(RATED_OUTCOMES)]
    xs = pd.to_numeric(rows[PARAM_PREFIX + x], errors="coerce")
    rows = rows[np.isfinite(xs) & (xs > 0)]
    if rows.empty:
        return f"no stability map: no complete, exploded or slow trial has a value of {x}"
    if x != "clip_threshold" and ("clip_threshold" in params or "clip_method" in params):
        y = "clip_threshold"
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        ys = [_clip_threshold(by_number[int(n)], spec) for n in rows["number"]]
    else:
        others = [f for f in floats if f != x]
        if not others:
            return (f"no stability map: it needs two float params with a positive range "
                    f"(or clipping in the space); the space has only {x}")
        y = others[0]
        ys = pd.to_numeric(rows[PARAM_PREFIX + y], errors="coerce").tolist()
    frame = pd.DataFrame({x: rows[PARAM_PREFIX + x].astype(float).to_numpy(),
                          y: np.asarray([math.nan if v is None else v for v in ys],
                                        dtype=np.float64),
                          "exploded": rows["exploded"].astype(bool).to_numpy()})
    keep = np.array([v is not None for v in ys]) if y == "clip_threshold" else (
        np.isfinite(frame[y].to_numpy()))
    note = ""
    if not keep.all():
        why = ("they clip by a method without a threshold" if y == "clip_threshold"
               else f"{y} was inactive")
        note = f"{int((~keep).sum())} trial(s) left out of the stability map: {why}"
    frame = frame[keep].reset_index(drop=True)
    if frame.empty:
        return f"no stability map: no trial has values of both {x} and {y} ({note})"
    return MapData(frame, x, y, note)


def _clip_threshold(trial: optuna.trial.FrozenTrial, spec: SweepSpec | None) -> float | None:
    """The threshold the trial clipped at (its param, else its config, else fixed, else the
    default); NaN when it did not clip; None when it clipped by a method with no threshold."""
    config = trial.user_attrs.get(keys.CONFIG)
    config = config if isinstance(config, Mapping) else {}
    fixed = spec.fixed if spec is not None else {}

    def lookup(name: str) -> Any:
        for source in (trial.params, config, fixed):
            if name in source:
                return source[name]
        return getattr(_DEFAULTS, name)

    method = lookup("clip_method")
    if method == "none":
        return math.nan
    if method not in _THRESHOLD_METHODS:
        return None
    try:
        return float(lookup("clip_threshold"))
    except (TypeError, ValueError):
        return None
