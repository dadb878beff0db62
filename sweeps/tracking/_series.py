"""StepRecords and traces -> MLflow metric points ``[key, value, timestamp_ms, step]``.

Metric keys of a trial run (``step`` is the 0-based optimizer step of the trace, except the
evaluation metrics, logged at the number of steps completed when they were taken):

=============================  ==============================================================
key                            points
=============================  ==============================================================
``grad_norm/global``           every step (pre-clip)
``grad_norm/global_log10``     every step with a finite, positive norm: log10 of it
``grad_norm_log10/<layer>``    log10 of the layer's norm, every ``layer_every`` steps (auto:
                               ``max(25, layers)``), every step with a NaN/inf, the last
                               step, and at finish every step of the explosion window
``guard/amp_overflow_count``   run-length, cumulative fp16 overflow (skipped) steps
``guard/nonfinite_grads``      run-length, gradient tensors holding a NaN or inf at that step
``guard/clip_coef``            at finish from the trace, run-length (every step while clipping)
``guard/amp_scale``            at finish from the trace, run-length, fp16 runs only
``loss``                       every step
``lr``                         run-length: first and last step of each constant run (exact)
``eval_*`` and friends         each evaluation, at its step; ``steps_run``, ``overflow_count``
=============================  ==============================================================

The names are chosen for the MLflow UI, which draws one section per key prefix, sections and
charts sorted as text: ``grad_norm`` comes first with the global norm (raw, then log10), the
layers follow in model order (their names are zero-padded, ``stability.stats.layer_labels``)
on a log10 axis, where the steps before an explosion are not a flat line at 0. Raw per-layer
norms are in the run's ``trace.parquet``; any chart can also be switched to a log axis in the
UI (chart menu, Configure, Y-axis scale: Log scale). A layer value that is NaN, inf or 0 has no
log10 point: ``guard/nonfinite_grads`` and the tags say when the gradients went non-finite.

Run-length series cost two points per change instead of one per step, and still draw exactly
(flat across a run, a step between runs). Values go out as they are: SQL stores keep NaN (as a
flag) and clamp +-inf to +-1.8e308, so explosions are also tagged (``stabsweep.exploded``,
``stabsweep.nonfinite_step``) and counted (``grad/nonfinite``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from stability import trace as tr
from stability.records import StepRecord
from sweeps.tracking._settings import auto_layer_every

__all__ = ["GLOBAL_KEY", "GLOBAL_LOG10_KEY", "LAYER_KEY_PREFIX", "LAYER_PREFIX", "RunLength",
           "TraceEncoder", "layer_key", "metric_key"]

LAYER_PREFIX = tr.LAYER_PREFIX
"""prefix of the per-layer columns of a trace (owned by stability.trace)."""
LAYER_KEY_PREFIX = "grad_norm_log10/"
"""prefix of the per-layer MLflow metrics (log10 of the norm)."""
GLOBAL_KEY = "grad_norm/global"
GLOBAL_LOG10_KEY = "grad_norm/global_log10"
Point = list[Any]  # [key, value, timestamp_ms, step]
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
EXPLOSION_WINDOW = 200
"""At finish, per-layer norms of up to this many steps before the verdict go out at full
resolution (from ``onset - 20``), so the explosion reads right in MLflow's charts."""


def metric_key(name: str) -> str:
    """``name`` as a valid MLflow metric key (other characters become ``_``)."""
    key = _BAD_KEY_CHARS.sub("_", name).strip("/") or "_"
    return re.sub(r"/+", "/", key)[:250]


def layer_key(layer: str) -> str:
    """MLflow key of a layer's (log10) gradient norm: ``grad_norm_log10/<layer>``."""
    return metric_key(LAYER_KEY_PREFIX + layer)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


class RunLength:
    """A piecewise-constant series sent as the first and the last step of each constant run."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.value: float | None = None
        self.start = -1
        self.last = -1

    def push(self, step: int, value: float, ts: int, out: list[Point]) -> None:
        if self.value is not None and _same(value, self.value):
            self.last = step
            return
        if self.value is not None and self.last != self.start:
            out.append([self.key, self.value, ts, self.last])  # end of the previous run
        out.append([self.key, value, ts, step])
        self.value, self.start, self.last = value, step, step

    def close(self, ts: int, out: list[Point]) -> None:
        if self.value is not None and self.last != self.start:
            out.append([self.key, self.value, ts, self.last])
            self.start = self.last

    def extend(self, steps: np.ndarray, values: np.ndarray, ts: int) -> list[Point]:
        out: list[Point] = []
        for step, value in zip(steps.tolist(), values.tolist()):
            self.push(int(step), float(value), ts, out)
        self.close(ts, out)
        return out


class TraceEncoder:
    """Turns the StepRecords of one trial into metric points; keeps what it sent."""

    def __init__(self, layer_every: int | None) -> None:
        self.layer_every = layer_every
        """None until the first record says how many layers there are (automatic cadence)."""
        self._lr = RunLength("lr")
        self._overflow = RunLength("guard/amp_overflow_count")
        self._nonfinite = RunLength("guard/nonfinite_grads")
        self._overflows = 0
        self._keys: dict[tuple[str, ...], list[str]] = {}
        self._last: StepRecord | None = None
        self.layer_steps: set[int] = set()
        self.first_nonfinite: int | None = None
        self.steps = 0

    def _layer_keys(self, names: tuple[str, ...]) -> list[str]:
        keys = self._keys.get(names)
        if keys is None:
            keys = [layer_key(name) for name in names]
            self._keys[names] = keys
        return keys

    def encode(self, records: Iterable[StepRecord], ts: int) -> list[Point]:
        out: list[Point] = []
        for record in records:
            step = record.step
            norm = record.global_norm
            out.append(["loss", record.loss, ts, step])
            out.append([GLOBAL_KEY, norm, ts, step])
            if 0.0 < norm < math.inf:
                out.append([GLOBAL_LOG10_KEY, math.log10(norm), ts, step])
            self._lr.push(step, float(record.lr), ts, out)
            self._overflows += int(record.overflow)
            self._overflow.push(step, float(self._overflows), ts, out)
            self._nonfinite.push(step, float(record.nonfinite), ts, out)
            bad = (record.nonfinite > 0 or not math.isfinite(record.loss)
                   or not math.isfinite(record.global_norm))
            if bad and self.first_nonfinite is None:
                self.first_nonfinite = step
            if self.layer_every is None:
                self.layer_every = auto_layer_every(len(record.layer_names))
            if step % self.layer_every == 0 or bad:
                self._layers(record, ts, out)
            self._last = record
            self.steps = step + 1
        return out

    def _layers(self, record: StepRecord, ts: int, out: list[Point]) -> None:
        if record.step in self.layer_steps:
            return
        self.layer_steps.add(record.step)
        values = np.asarray(record.layer_norms, dtype=np.float64).tolist()
        out.extend([key, math.log10(value), ts, record.step]
                   for key, value in zip(self._layer_keys(record.layer_names), values)
                   if 0.0 < value < math.inf)

    def close(self, ts: int) -> list[Point]:
        """End points of the run-length series and the last step's per-layer norms."""
        out: list[Point] = []
        for series in (self._lr, self._overflow, self._nonfinite):
            series.close(ts, out)
        if self._last is not None:
            self._layers(self._last, ts, out)
        return out

    def backfill(self, trace: Any, ts: int, *, fp16: bool, window_start: int | None
                 ) -> list[Point]:
        """Series only the trace has (clip coefficient, AMP scale) and the explosion window."""
        out: list[Point] = []
        if trace is None or len(trace) == 0 or "step" not in trace.columns:
            return out
        steps = trace["step"].to_numpy(np.int64)
        if "clip_coef" in trace.columns:
            out += RunLength("guard/clip_coef").extend(steps, trace["clip_coef"].to_numpy(float),
                                                       ts)
        if fp16 and "amp_scale" in trace.columns:
            out += RunLength("guard/amp_scale").extend(steps, trace["amp_scale"].to_numpy(float),
                                                       ts)
        if window_start is not None:
            columns = tr.layer_columns(trace)
            keys = [layer_key(tr.layer_of(c)) for c in columns]
            rows = np.flatnonzero(steps >= max(0, window_start))
            values = trace[columns].to_numpy(np.float64) if columns else None
            for row in rows.tolist():
                step = int(steps[row])
                if step in self.layer_steps or values is None:
                    continue
                self.layer_steps.add(step)
                out.extend([k, math.log10(v), ts, step]
                           for k, v in zip(keys, values[row].tolist()) if 0.0 < v < math.inf)
        return out
