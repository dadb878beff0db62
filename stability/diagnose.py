"""Trace -> what happened: onset, first layer to blow up, growth rate, loss impact, the fix.

The trace is the guard's step table: ``step, loss, grad_norm (pre-clip), lr, clip_coef,
clip_threshold, amp_scale, overflow, nonfinite`` and one ``grad_norm/<layer>`` column per
layer, in layer order. Norms are analysed in log space (their noise is multiplicative).

Onset: a hinge fit (flat, then linear growth of the log-norm) up to the verdict gives the
kink; a robust band (median + 3 MAD-sigmas of the pre-kink log-norms) gives the last step
still inside the healthy band, walking back from the verdict. The onset is that step, or the
kink when the fit is clear and earlier (a slow explosion leaves the band late).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from stability import trace as tr
from stability.config import ConfigError, StabilityConfig
from stability.records import Verdict

_HINGE_SPAN = 2000  # steps before the verdict searched for the kink
_REF_SPAN = 200  # pre-onset steps that define the healthy band
_LOSS_WINDOW = 50  # steps averaged for loss_before
_BAND_Z, _BAND_FLOOR = 3.0, 0.1  # band: median + max(3 sigma, 10 %) in log space
_EARLY_ONSET = 500  # "the first few hundred steps": warm-up is the fix


@dataclass(slots=True, frozen=True)
class Suggestion:
    """A concrete fix: what to change, why (with its number), and the StabilityConfig edit."""

    intervention: str
    """``precision``, ``clip``, ``warmup``, ``lr`` or ``init``."""
    text: str
    changes: dict[str, Any]


@dataclass(slots=True)
class Diagnosis:
    """What an explosion looked like, or that the run was healthy."""

    exploded: bool
    onset_step: int | None = None
    verdict_step: int | None = None
    verdict_kind: str | None = None
    first_layer: str | None = None
    growth_rate: float | None = None
    """per-step factor of the global norm between onset and verdict (exp of the log slope)."""
    loss_before: float | None = None
    """mean loss over the (up to) 50 steps before onset."""
    loss_after: float | None = None
    """loss at the verdict step (may be inf or NaN)."""
    lr_at_onset: float | None = None
    overflow_count: int = 0
    pre_onset_norm_p90: float | None = None
    """90th percentile of the global norms before onset (the whole run when healthy)."""
    suggestions: list[Suggestion] = field(default_factory=list)
    steps: int = 0
    max_norm: float | None = None
    max_norm_step: int | None = None
    verdict: Verdict | None = None

    def summary(self) -> str:
        """A few lines an engineer reads after a blow-up (or a healthy run)."""
        if not self.steps:
            return "no steps recorded: nothing to diagnose."
        peak = (f"max global grad norm {_fmt(self.max_norm)} at step {self.max_norm_step}"
                if self.max_norm is not None else "no finite grad norm")
        if not self.exploded:
            return (f"healthy: no explosion in {self.steps} steps; {peak}, "
                    f"p90 {_fmt(self.pre_onset_norm_p90)}.")
        v = self.verdict
        lines = [f"EXPLODED: {self.verdict_kind} at step {self.verdict_step}"
                 + (f" ({v.detector}: {v.message})" if v is not None and v.message else "")]
        lines.append(f"onset at step {self.onset_step} (lr {_fmt(self.lr_at_onset)}), first "
                     f"layer to rise: {self.first_layer or 'unknown'}")
        if self.growth_rate is not None:
            lines.append(f"global grad norm grew x{self.growth_rate:.3g} per step from onset "
                         f"to verdict; pre-onset p90 {_fmt(self.pre_onset_norm_p90)}; {peak}")
        lines.append(f"loss {_fmt(self.loss_before)} before onset -> "
                     f"{_fmt(self.loss_after)} at the verdict")
        if self.overflow_count:
            lines.append(f"fp16 overflow (skipped) steps: {self.overflow_count}")
        if self.suggestions:
            lines.append("suggested fixes, best first:")
            lines += [f"  {i}. {s.text}  -> {s.changes}"
                      for i, s in enumerate(self.suggestions, 1)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: NaN becomes None, +-inf the strings ``"inf"`` / ``"-inf"``."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["suggestions"] = [asdict(s) for s in self.suggestions]
        data["verdict"] = self.verdict.to_dict() if self.verdict is not None else None
        data["summary"] = self.summary()
        return _jsonable(data)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _sig(value: float, digits: int = 3) -> float:
    """Round to significant digits, as printed with ``:g``."""
    return float(f"{value:.{digits}g}")


# ---------------------------------------------------------------------------- the trace
_validated = tr.validated
layer_columns = tr.layer_columns


def _log(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(values)
    out[~np.isfinite(out)] = np.nan
    return out


def _ended_badly(loss: np.ndarray, norm: np.ndarray) -> bool:
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


def _first_layer(frame: pd.DataFrame, layers: list[str], skip: np.ndarray, onset: int,
                 v: int) -> str | None:
    """The layer whose trailing above-band run began first (largest rise breaks ties)."""
    best: tuple[int, float] | None = None
    name = None
    lo = max(0, onset - _REF_SPAN)
    for col in layers:
        logs = _log(frame[col].to_numpy(np.float64))
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


# ---------------------------------------------------------------------------- diagnose
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
    logs = _log(norm)
    finite = np.isfinite(norm) & ~skip
    diag = Diagnosis(exploded=False, steps=n, overflow_count=int(skip.sum()))
    if finite.any():
        i = int(np.argmax(np.where(finite, norm, -np.inf)))
        diag.max_norm, diag.max_norm_step = float(norm[i]), int(steps[i])
    if verdict is None and _ended_badly(loss, norm):
        from stability.detectors import default_detector, replay

        verdict = replay(default_detector(), frame)  # the first verdict the guard would give
    if verdict is None:
        if finite.any():
            diag.pre_onset_norm_p90 = float(np.percentile(norm[finite], 90))
        return diag

    v = int(np.clip(np.searchsorted(steps, verdict.step, side="right") - 1, 0, n - 1))
    onset = _onset(logs, skip, v)
    if onset == v and verdict.kind == "loss_divergence":
        found = _last_in_band(_log(loss), skip, v, max(0, v - _HINGE_SPAN), v)
        onset = found[0] if found is not None else v
    pre = finite.copy()
    pre[onset:] = False
    grow = np.flatnonzero(np.isfinite(logs[onset:v + 1]) & ~skip[onset:v + 1]) + onset
    before = loss[max(0, onset - _LOSS_WINDOW):onset]
    before = before[np.isfinite(before)]
    diag.exploded = True
    diag.verdict = verdict
    diag.onset_step, diag.verdict_step = int(steps[onset]), int(verdict.step)
    diag.verdict_kind = verdict.kind
    diag.first_layer = (_first_layer(frame, layers, skip, onset, v)
                        or _largest_rise(frame, layers, onset, v) or verdict.layer)
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


# ---------------------------------------------------------------------------- suggestions
def _nice_steps(value: float) -> int:
    unit = 50 if value < 1000 else 500
    return int(math.ceil(value / unit) * unit)


def _warmup_in_trace(lr: np.ndarray) -> int:
    """Steps until the lr first reaches 99 % of its peak (0 when it starts there)."""
    finite = lr[np.isfinite(lr)]
    if finite.size == 0 or finite.max() <= 0 or lr[0] >= 0.5 * finite.max():
        return 0
    return int(np.argmax(lr >= 0.99 * finite.max()))


def suggest(diag: Diagnosis, frame: pd.DataFrame, config: StabilityConfig | None = None
            ) -> list[Suggestion]:
    """Concrete fixes for an explosion, each with its number and config change, best first."""
    if not diag.exploded or diag.onset_step is None:
        return []
    cfg = config or StabilityConfig()
    thresholds = frame["clip_threshold"].to_numpy(np.float64)
    clipping = (cfg.clip_method != "none") if config is not None else bool(
        np.isfinite(thresholds).any())
    threshold = cfg.clip_threshold if config is not None else (
        float(np.nanmedian(thresholds)) if clipping else math.nan)
    fp16 = cfg.precision == "fp16" if config is not None else bool(
        (frame["amp_scale"].to_numpy(np.float64) != 1.0).any())
    warmup = cfg.warmup_steps if config is not None else _warmup_in_trace(
        frame["lr"].to_numpy(np.float64))
    onset, layer, p90 = diag.onset_step, diag.first_layer, diag.pre_onset_norm_p90
    ranked: list[tuple[float, Suggestion]] = []

    if fp16 and (diag.verdict_kind == "overflow_streak"
                 or diag.overflow_count >= max(10, 0.05 * diag.steps)):
        ranked.append((100 if diag.verdict_kind == "overflow_streak" else 60, Suggestion(
            "precision", f"train in bf16 instead of fp16: {diag.overflow_count} of "
            f"{diag.steps} steps overflowed (fp16 tops out at 65504; bf16 has fp32's range)",
            {"precision": "bf16"})))
    tight_clip = False
    if p90 is not None and p90 > 0:
        at = _sig(p90)
        why = f"the 90th percentile of pre-onset norms (onset at step {onset})"
        if not clipping or cfg.clip_method != "norm":
            ranked.append((90, Suggestion("clip", f"clip by norm at {at:g}, {why}",
                                          {"clip_method": "norm", "clip_threshold": at})))
        elif threshold > 1.05 * p90:
            ranked.append((80, Suggestion(
                "clip", f"lower the clip threshold from {threshold:g} to {at:g}, {why}",
                {"clip_method": "norm", "clip_threshold": at})))
        else:
            tight_clip = True  # clipping was already tight: the update size is not the cause
    if onset <= _EARLY_ONSET:
        steps = _nice_steps(max(100.0, 2.0 * onset))
        if warmup < steps:
            have = f"{warmup}-step warm-up" if warmup else "no warm-up"
            ranked.append((95 if onset < 50 else 75, Suggestion(
                "warmup", f"warm the lr up over {steps} steps: the explosion began early, at "
                f"step {onset}, with {have}", {"warmup_steps": steps})))
    if cfg.on_spike == "stop" and diag.verdict_kind in ("spike", "median_ratio", "ceiling"):
        # a norm anomaly stopped the run: with skip, the step is dropped and training goes
        # on; only spikes that do not settle (or a diverging loss) stop it
        ranked.append((92 if tight_clip else 85, Suggestion(
            "on_spike", f"skip anomalous steps instead of stopping (on_spike: skip): a "
            f"{diag.verdict_kind} stopped the run; a spike that passes in a few steps costs "
            "only its update", {"on_spike": "skip"})))
    lr = diag.lr_at_onset
    if lr is not None and math.isfinite(lr) and lr > 0:
        lower = _sig(lr / 3.0, 2)
        no_growth = diag.growth_rate is None or diag.growth_rate < 1.01
        ranked.append((88 if tight_clip or no_growth else 50, Suggestion(
            "lr", f"lower the lr to {lower:g} (onset at lr {lr:.3g})", {"lr": lower})))
    if layer is not None and cfg.init == "default":
        names = [tr.layer_of(c) for c in layer_columns(frame)]
        lowered = layer.lower()
        if any(key in lowered for key in ("rnn", "lstm", "gru", "recurr")):
            ranked.append((70, Suggestion(
                "init", f"orthogonal init (gain 1) for {layer}, the first layer to blow up: "
                "it keeps the recurrent Jacobian's spectrum near 1", {"init": "orthogonal",
                                                                      "init_gain": 1.0})))
        elif layer in names and len(names) >= 6 and names.index(layer) >= 2 * len(names) / 3:
            ranked.append((55, Suggestion(
                "init", f"residual_zero init (zero the last layer of each residual branch): "
                f"the first layer to blow up, {layer}, is deep ({names.index(layer) + 1} of "
                f"{len(names)})", {"init": "residual_zero"})))
    out = []
    for _, s in sorted(ranked, key=lambda item: -item[0]):
        try:
            cfg.replace(**s.changes)
        except ConfigError:
            continue  # never suggest a change the config would reject
        out.append(s)
    return out
