"""Plots of a trace and of a sweep: grad-norm trace, per-layer heat map, stability map.

matplotlib (Agg backend) is imported inside each function, so ``import stability`` stays
light. Every function saves a PNG, closes its figure and returns the path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stability import trace as tr
from stability.records import Verdict

if TYPE_CHECKING:
    from stability.diagnose import Diagnosis

_MAX_COLUMNS = 2000  # heat-map steps are max-pooled down to this many columns


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (headless; imported on first use)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders made) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=110, bbox_inches="tight", format="png")
    finally:
        pyplot().close(fig)
    return path


def _require(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame; got {type(frame).__name__}.")
    for col in columns:
        if col not in frame.columns:
            raise ValueError(f"{what} is missing column {col!r}; columns present: "
                             f"{list(frame.columns)}.")


# ---------------------------------------------------------------------------- trace
def plot_trace(trace: pd.DataFrame, path: str | Path, verdict: Verdict | None = None,
               diagnosis: Diagnosis | None = None, title: str | None = None) -> Path:
    """Global grad norm (log y) and loss (second axis) vs step; clip threshold, onset, verdict.

    Non-finite norms and losses are drawn as red crosses at the top of their axis.
    """
    _require(trace, ("step", "grad_norm", "loss"), "trace")
    plt = pyplot()
    steps = trace["step"].to_numpy(np.float64)
    norm = trace["grad_norm"].to_numpy(np.float64)
    loss = trace["loss"].to_numpy(np.float64)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ok = np.isfinite(norm) & (norm > 0)
    ax.plot(steps[ok], norm[ok], color="tab:blue", lw=1.0, label="grad norm (pre-clip)")
    ax.set_yscale("log")
    top = float(norm[ok].max()) * 2 if ok.any() else 10.0
    bad = ~np.isfinite(norm)
    if bad.any():
        ax.scatter(steps[bad], np.full(bad.sum(), top), marker="x", color="red", zorder=5,
                   label="non-finite grad norm")
    if "clip_threshold" in trace.columns:
        thr = trace["clip_threshold"].to_numpy(np.float64)
        if np.isfinite(thr).any():
            ax.plot(steps, np.where(np.isfinite(thr) & (thr > 0), thr, np.nan), ls="--",
                    color="tab:green", lw=1.0, label="clip threshold")
    ax.set_xlabel("step")
    ax.set_ylabel("global grad norm")
    ax2 = ax.twinx()
    lok = np.isfinite(loss)
    ax2.plot(steps[lok], loss[lok], color="tab:orange", lw=0.8, alpha=0.8, label="loss")
    if (~lok).any():
        ltop = float(loss[lok].max()) if lok.any() else 1.0
        ax2.scatter(steps[~lok], np.full((~lok).sum(), ltop), marker="x", color="darkred",
                    zorder=5, label="non-finite loss")
    if lok.any() and (loss[lok] > 0).all() and loss[lok].max() > 100 * loss[lok].min():
        ax2.set_yscale("log")
    ax2.set_ylabel("loss")
    marks = []
    if diagnosis is not None and diagnosis.onset_step is not None:
        marks.append((diagnosis.onset_step, "onset", "tab:purple"))
    if verdict is None and diagnosis is not None:
        verdict = diagnosis.verdict
    if verdict is not None:
        marks.append((verdict.step, f"verdict: {verdict.kind}", "red"))
    for i, (step, label, color) in enumerate(marks):
        ax.axvline(step, color=color, ls=":", lw=1.2)
        ax.annotate(f"{label} @ {step}", xy=(step, 0.0), xycoords=("data", "axes fraction"),
                    xytext=(3, 6 + 12 * i), textcoords="offset points", color=color,
                    fontsize=8, bbox={"facecolor": "white", "alpha": 0.7, "lw": 0})
    lines = ax.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    ax.set_title(title or "gradient norm and loss")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------- heat map
def _pool(matrix: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max-pool columns to at most _MAX_COLUMNS; a block with a non-finite value keeps NaN."""
    n = matrix.shape[1]
    if n <= _MAX_COLUMNS:
        return matrix, steps
    size = math.ceil(n / _MAX_COLUMNS)
    pad = (-n) % size
    padded = np.pad(matrix, ((0, 0), (0, pad)), constant_values=-np.inf)
    blocks = padded.reshape(matrix.shape[0], -1, size)
    pooled = blocks.max(axis=2)
    pooled[np.isnan(blocks).any(axis=2) | np.isposinf(blocks).any(axis=2)] = np.nan
    return pooled, steps[::size]


def plot_layer_heatmap(trace: pd.DataFrame, path: str | Path, title: str | None = None
                       ) -> Path:
    """Layers x steps, log-scale colour; NaN / inf cells in red, zero norms in black."""
    _require(trace, ("step",), "trace")
    columns = tr.layer_columns(trace)
    if not columns:
        raise ValueError(f"trace has no per-layer columns named '{tr.LAYER_PREFIX}<layer>'; "
                         f"columns present: {list(trace.columns)}.")
    plt = pyplot()
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Patch

    names = [tr.layer_of(c) for c in columns]
    steps = trace["step"].to_numpy(np.float64)
    matrix, steps = _pool(trace[columns].to_numpy(np.float64).T, steps)
    positive = np.isfinite(matrix) & (matrix > 0)
    lo = float(matrix[positive].min()) if positive.any() else 1e-3
    hi = float(matrix[positive].max()) if positive.any() else 1.0
    hi = max(hi, lo * 10)
    shown = np.where(np.isfinite(matrix), np.where(matrix > 0, matrix, lo * 1e-3), np.nan)
    cmap = plt.get_cmap("viridis").with_extremes(bad="red", under="black")
    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.3 * len(names) + 1.5)))
    first, last = (steps[0], steps[-1]) if steps.size else (0.0, 1.0)
    image = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", interpolation="nearest",
                      cmap=cmap, norm=LogNorm(vmin=lo, vmax=hi),
                      extent=(first - 0.5, last + 0.5, len(names) - 0.5, -0.5))
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8 if len(names) < 40 else 5)
    ax.set_xlabel("step")
    fig.colorbar(image, ax=ax, label="grad norm (pre-clip)", extend="min")
    handles = []
    if (~np.isfinite(matrix)).any():
        handles.append(Patch(color="red", label="NaN / inf"))
    if (np.isfinite(matrix) & (matrix <= 0)).any():
        handles.append(Patch(color="black", label="zero"))
    if handles:
        ax.legend(handles=handles, loc="upper left", fontsize=8, framealpha=0.8)
    ax.set_title(title or "per-layer gradient norm")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------- sweep map
def _log_edges(values: np.ndarray, bins: int) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo * 1.0001:
        lo, hi = lo / 2, hi * 2
    return np.geomspace(lo, hi * (1 + 1e-9), bins + 1)


def plot_stability_map(df: pd.DataFrame, path: str | Path, x: str = "lr",
                       y: str = "clip_threshold", exploded: str = "exploded",
                       title: str | None = None, bins: int = 8,
                       none_label: str = "no clip") -> Path:
    """Explosion probability over ``x`` x ``y`` (log-spaced bins), one row per trial.

    Each cell shows the exploded fraction (colour) and ``exploded/trials``; trials are drawn
    on top (x = exploded, o = stable). Rows whose ``y`` is NaN (no clipping) form their own
    band at the top, labelled ``none_label``.
    """
    _require(df, (x, y, exploded), "stability map data")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1 but got {bins!r}.")
    xs = pd.to_numeric(df[x], errors="coerce").to_numpy(np.float64)
    ys = pd.to_numeric(df[y], errors="coerce").to_numpy(np.float64)
    bad_x = ~(np.isfinite(xs) & (xs > 0))
    if bad_x.any():
        raise ValueError(f"column {x!r} must hold positive numbers (log-scale axis); got "
                         f"{df[x].iloc[int(np.argmax(bad_x))]!r}. Drop or fix those rows.")
    bad_y = np.isfinite(ys) & (ys <= 0) | np.isinf(ys)
    if bad_y.any():
        raise ValueError(f"column {y!r} must hold positive numbers or NaN (no clipping); got "
                         f"{df[y].iloc[int(np.argmax(bad_y))]!r}.")
    if df[exploded].isna().any():
        raise ValueError(f"column {exploded!r} must be true/false for every row; found NaN.")
    boom = df[exploded].astype(bool).to_numpy()
    plt = pyplot()

    n_x = min(bins, max(1, len(np.unique(xs))))
    x_edges = _log_edges(xs, n_x)
    has_y = np.isfinite(ys)
    n_y = min(bins, max(1, len(np.unique(ys[has_y])))) if has_y.any() else 0
    y_edges = _log_edges(ys[has_y], n_y) if n_y else np.array([])
    no_clip = bool((~has_y).any())
    rows = n_y + int(no_clip)
    # fractional bin coordinates (log-interpolated) so that points sit inside their cells
    px = np.clip(np.interp(np.log(xs), np.log(x_edges), np.arange(n_x + 1)), 0, n_x - 1e-9)
    py = np.full(xs.shape, rows - 0.5)  # the "no clip" band is the top row
    if n_y:
        py[has_y] = np.clip(np.interp(np.log(ys[has_y]), np.log(y_edges), np.arange(n_y + 1)),
                            0, n_y - 1e-9)
    ix, iy = px.astype(int), py.astype(int)
    counts = np.zeros((rows, n_x))
    booms = np.zeros((rows, n_x))
    np.add.at(counts, (iy, ix), 1)
    np.add.at(booms, (iy, ix), boom)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(counts > 0, booms / counts, np.nan)

    fig, ax = plt.subplots(figsize=(1.2 * n_x + 3, 0.7 * rows + 2))
    cmap = plt.get_cmap("RdYlGn_r").with_extremes(bad="#eeeeee")
    image = ax.imshow(np.ma.masked_invalid(frac), origin="lower", aspect="auto", cmap=cmap,
                      vmin=0, vmax=1, extent=(0, n_x, 0, rows), interpolation="nearest")
    for r in range(rows):
        for c in range(n_x):
            if counts[r, c]:
                ax.text(c + 0.5, r + 0.82, f"{int(booms[r, c])}/{int(counts[r, c])}",
                        ha="center", va="center", fontsize=7, color="black")
    # trials at their (log-interpolated) coordinates; the "no clip" band gets a jitter
    sy = py + np.where(has_y, 0.0, np.random.default_rng(8191).uniform(-0.3, 0.2, len(xs)))
    ax.scatter(px[~boom], sy[~boom], marker="o", s=12, facecolors="none", edgecolors="navy",
               lw=0.7, label="stable trial")
    ax.scatter(px[boom], sy[boom], marker="x", s=14, color="black", lw=0.8,
               label="exploded trial")
    ax.set_xticks(np.arange(n_x + 1))
    ax.set_xticklabels([f"{e:.2g}" for e in x_edges], fontsize=8, rotation=30)
    ticks = [float(t) for t in range(n_y + 1)] if n_y else []
    labels = [f"{e:.2g}" for e in y_edges]
    if no_clip:
        ticks.append(rows - 0.5)
        labels.append(none_label)
        if n_y:
            ax.axhline(n_y, color="black", lw=1.2)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel(f"{x} (log bins)")
    ax.set_ylabel(f"{y} (log bins)")
    ax.set_xlim(0, n_x)
    ax.set_ylim(0, rows)
    fig.colorbar(image, ax=ax, label="explosion probability")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8, frameon=False)
    ax.set_title(title or f"explosion probability, {len(xs)} trials", loc="left")
    return save_figure(fig, path)
