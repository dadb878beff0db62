"""The fix advice: which StabilityConfig change to try after an explosion, best first.

:func:`suggest` ranks the interventions (precision, clipping, warm-up, on_spike, lr, init)
from a :class:`~stability._diagnosis.Diagnosis` and the trace (or the run's config), each with
the number that motivates it; a change the config would reject is never suggested.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from stability import trace as tr
from stability._diagnosis import Diagnosis, Suggestion
from stability.config import ConfigError, StabilityConfig

__all__ = ["suggest", "suggest_for_stall"]

_EARLY_ONSET = 500  # "the first few hundred steps": warm-up is the fix


def _sig(value: float, digits: int = 3) -> float:
    """Round to significant digits, as printed with ``:g``."""
    return float(f"{value:.{digits}g}")


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
    if cfg.precision == "fp16_noscale" and config is not None:
        # no loss scaler: an overflow is an inf gradient at once (a nonfinite verdict, no
        # overflow count), and small gradients underflow to zero on the way
        ranked.append((100 if diag.verdict_kind in ("nonfinite", "unsettled") else 65, Suggestion(
            "precision", "train in bf16 (fp32's range), or keep fp16 with loss scaling "
            "(precision: fp16): without a scaler an fp16 gradient past 65504 is inf and "
            "small ones underflow to zero", {"precision": "bf16"})))
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
    # a run that blew up while its lr was still warming up met its limit below the peak: a
    # longer warm-up only moves the blow-up later; the lr at onset is the number that matters
    in_warmup = 0 < onset < warmup
    if onset <= _EARLY_ONSET and not in_warmup:
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
        during = f", during the warm-up to {cfg.lr:g}" if in_warmup else ""
        # Adam's step is the gradient over its running RMS: clipping the norm scales both and
        # hardly shrinks the update, so for Adam the lr comes before clipping (README example:
        # clipped at the p90 it still blows up, at a third of the onset lr it trains)
        adaptive = config is not None and cfg.optimizer in ("adam", "adamw")
        rank = 91 if adaptive else 88 if tight_clip or no_growth or in_warmup else 50
        ranked.append((rank, Suggestion(
            "lr", f"lower the lr to {lower:g} (onset at lr {lr:.3g}{during})", {"lr": lower})))
    if layer is not None and cfg.init == "default":
        names = [tr.layer_of(c) for c in tr.layer_columns(frame)]
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


def suggest_for_stall(diag: Diagnosis, frame: pd.DataFrame,
                      config: StabilityConfig | None = None) -> list[Suggestion]:
    """Fixes for a run that never learned, best first.

    A gradient spike means large updates threw the weights somewhere flat (dead ReLUs,
    saturated units, an output collapsed to a constant): a 3x smaller lr, and (not for Adam,
    whose step clipping hardly shrinks) a clip at the norms before the spike. Gradients that
    faded 100x while the loss stood still: a smaller lr as well. Neither: the signal does not
    get through the layers, so the updates barely move the loss: an init that keeps its scale
    through depth, with a 4x smaller lr since the gradients grow with it. Checked on deep_mlp
    (300 steps; each fix alone): sgd lr 0.3 xavier_normal (spike) trains to 0.20 at lr 0.1,
    0.23 clipped; adam lr 0.05 (spike) to 0.064 at lr 0.0053, while clipping still blows up;
    sgd lr 0.2 (no spike) to 0.08 with kaiming_normal at lr 0.05, while kaiming_normal at lr
    0.2 blows up and lr 0.6 or 0.067 alone do not learn.
    """
    if not diag.never_learned:
        return []
    cfg = config or StabilityConfig()
    adaptive = config is not None and cfg.optimizer in ("adam", "adamw")
    lr_col = frame["lr"].to_numpy(np.float64)
    norm = frame["grad_norm"].to_numpy(np.float64)
    steps = frame["step"].to_numpy(np.int64)
    peak_lr = float(np.nanmax(lr_col)) if np.isfinite(lr_col).any() else math.nan
    ranked: list[tuple[float, Suggestion]] = []
    finite = np.isfinite(norm) & (norm > 0)
    n, q = norm.size, max(1, norm.size // 4)
    head, tail = norm[:10][finite[:10]], norm[n - q:][finite[n - q:]]
    fade = (float(np.median(head) / np.median(tail))
            if head.size and tail.size and np.median(tail) > 0 else math.nan)
    if diag.spike_step is not None:
        at = int(np.clip(np.searchsorted(steps, diag.spike_step), 0, n - 1))
        lr = float(lr_col[at]) if math.isfinite(lr_col[at]) and lr_col[at] > 0 else peak_lr
        if math.isfinite(lr) and lr > 0:
            ranked.append((90, Suggestion(
                "lr", f"lower the lr to {_sig(lr / 3, 2):g}: at lr {lr:.3g} the gradient "
                f"norm spiked to {diag.spike_ratio:.3g}x its median (step {diag.spike_step})",
                {"lr": _sig(lr / 3, 2)})))
        before = norm[:at][finite[:at]]
        if before.size >= 5 and not adaptive and (cfg.clip_method != "norm" or config is None):
            p90 = _sig(float(np.percentile(before, 90)))
            ranked.append((80, Suggestion(
                "clip", f"clip by norm at {p90:g}, the 90th percentile of the norms before "
                f"the spike at step {diag.spike_step}",
                {"clip_method": "norm", "clip_threshold": p90})))
    elif math.isfinite(fade) and fade >= 100 and math.isfinite(peak_lr) and peak_lr > 0:
        ranked.append((85, Suggestion(
            "lr", f"lower the lr to {_sig(peak_lr / 3, 2):g}: the gradient norm faded "
            f"{fade:.3g}x while the loss stood still (dead or saturated units)",
            {"lr": _sig(peak_lr / 3, 2)})))
    elif math.isfinite(peak_lr) and peak_lr > 0 and cfg.init != "kaiming_normal":
        lower = _sig(peak_lr / 4, 2)
        ranked.append((75, Suggestion(
            "init", f"kaiming_normal init with the lr at {lower:g} (a quarter): no spike and "
            "no fading gradient, the signal does not get through the layers; kaiming keeps "
            "its scale through ReLU depth, and the gradients grow with it",
            {"init": "kaiming_normal", "lr": lower})))
    out = []
    for _, s in sorted(ranked, key=lambda item: -item[0]):
        try:
            cfg.replace(**s.changes)
        except ConfigError:
            continue
        out.append(s)
    return out
