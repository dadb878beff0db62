"""Gradient clipping: by norm, by value, AGC, AutoClip and ZClip.

Each method is a pure function over a list of gradient tensors that returns what it measured
(:class:`ClipResult`), plus a thin stateful class for the adaptive ones. The norm-based
methods reuse the global norm the monitor already measured (``GradStats.global_norm``): no
second pass over the gradients. Every number stays on the device; nothing syncs the host.

``ClipResult.coef`` is the factor the global gradient norm was scaled by (1.0 = untouched).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from stability.config import StabilityConfig
from stability.stats import GradStats

_EPS = 1e-6  # same guard as torch.nn.utils.clip_grad_norm_


@dataclass(slots=True)
class ClipResult:
    coef: Tensor
    """0-d: post-clip global norm / pre-clip global norm (1.0 when nothing was clipped)."""
    threshold: Tensor
    """0-d: the threshold in force this step (NaN where the method has none)."""


def _scalar(value: float, like: Tensor) -> Tensor:
    return torch.tensor(value, dtype=torch.float32, device=like.device)


def clip_by_norm(grads: Sequence[Tensor], total_norm: Tensor, max_norm: float | Tensor
                 ) -> ClipResult:
    """Scale gradients so their global norm is at most ``max_norm``.

    Same arithmetic as ``torch.nn.utils.clip_grad_norm_`` (coef = max_norm / (norm + 1e-6),
    clamped to 1), but ``total_norm`` is the norm already measured by the monitor.
    """
    threshold = max_norm if isinstance(max_norm, Tensor) else _scalar(max_norm, total_norm)
    coef = torch.clamp(threshold / (total_norm + _EPS), max=1.0)
    # A non-finite norm gives coef 0 or NaN; leave such gradients to the finite check.
    coef = torch.where(torch.isfinite(coef), coef, torch.ones_like(coef))
    if grads:
        torch._foreach_mul_(list(grads), coef.to(grads[0].dtype))
    return ClipResult(coef, threshold)


def clip_by_value(grads: Sequence[Tensor], total_norm: Tensor, clip_value: float) -> ClipResult:
    """Clamp every gradient element to [-clip_value, clip_value]."""
    grads = list(grads)
    if grads:
        torch._foreach_clamp_min_(grads, -clip_value)
        torch._foreach_clamp_max_(grads, clip_value)
    return ClipResult(_post_over_pre(grads, total_norm), _scalar(clip_value, total_norm))


def _unitwise_norm(x: Tensor) -> Tensor:
    """Norm per output unit: over all dims but the first (whole tensor for vectors/scalars)."""
    if x.ndim <= 1:
        return x.norm(2)
    return x.norm(2, dim=tuple(range(1, x.ndim)), keepdim=True)


def adaptive_clip(params: Sequence[torch.nn.Parameter], total_norm: Tensor,
                  clip_factor: float = 0.01, eps: float = 1e-3) -> ClipResult:
    """Unit-wise Adaptive Gradient Clipping (Brock et al. 2021, NFNets).

    For each unit (row of a weight), the gradient norm is clipped to
    ``clip_factor * max(||w_unit||, eps)``. Unit-wise norms are not the per-tensor norms the
    monitor measures, so AGC reads the parameters and gradients once more by necessity.
    """
    grads = []
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        max_norm = _unitwise_norm(p.detach()).clamp_min(eps) * clip_factor
        g_norm = _unitwise_norm(g)
        scale = torch.where(g_norm > max_norm, max_norm / g_norm.clamp_min(_EPS),
                            torch.ones_like(g_norm))
        g.mul_(scale.to(g.dtype))
        grads.append(g)
    return ClipResult(_post_over_pre(grads, total_norm), _scalar(clip_factor, total_norm))


def _post_over_pre(grads: list[Tensor], total_norm: Tensor) -> Tensor:
    if not grads:
        return torch.ones_like(total_norm)
    post = torch.stack(torch._foreach_norm(grads, 2.0)).float().norm(2)
    coef = post / (total_norm + _EPS)
    return torch.where(torch.isfinite(coef), coef.clamp(max=1.0), torch.ones_like(coef))


class Clipper(Protocol):
    def __call__(self, params: Sequence[torch.nn.Parameter], grads: Sequence[Tensor],
                 stats: GradStats) -> ClipResult: ...


class SplitClipper(Protocol):
    """A clipper whose work splits in two: ``plan`` is device math on the statistics alone
    (no host branch, no gradients: it can be replayed in a CUDA graph), ``apply`` scales the
    gradients by the plan. ``scales`` is False when ``apply`` does nothing."""

    split: bool
    scales: bool

    def plan(self, stats: GradStats) -> ClipResult: ...

    def apply(self, grads: Sequence[Tensor], clip: ClipResult) -> None: ...


def split_clipper(clipper: object) -> SplitClipper | None:
    """``clipper`` as a :class:`SplitClipper`, or None when it does not split."""
    return clipper if getattr(clipper, "split", False) else None  # type: ignore[return-value]


class NoClip:
    # Split clippers (``plan`` + ``apply``): the plan is device math on the statistics alone,
    # with no host branch, so the guard can replay it inside a CUDA graph; ``apply`` touches
    # the gradients (whose addresses change every step) outside it.
    split = True
    scales = False
    """``apply`` does nothing: the guard need not call it."""

    def plan(self, stats: GradStats) -> ClipResult:
        one = torch.ones_like(stats.global_norm)
        return ClipResult(one, torch.full_like(one, math.nan))

    def apply(self, grads: Sequence[Tensor], clip: ClipResult) -> None:
        return None

    def __call__(self, params, grads, stats):  # type: ignore[no-untyped-def]
        return self.plan(stats)


class NormClip:
    split = True
    scales = True

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm
        self._threshold: Tensor | None = None  # made once per device, not once per step

    def plan(self, stats: GradStats) -> ClipResult:
        """The coefficient ``clip_by_norm`` applies, from the measured norm (no gradients)."""
        norm = stats.global_norm
        if self._threshold is None or self._threshold.device != norm.device:
            self._threshold = _scalar(self.max_norm, norm)
        coef = torch.clamp(self._threshold / (norm + _EPS), max=1.0)
        coef = torch.where(torch.isfinite(coef), coef, torch.ones_like(coef))
        return ClipResult(coef, self._threshold)

    def apply(self, grads: Sequence[Tensor], clip: ClipResult) -> None:
        if grads:
            coef = clip.coef if grads[0].dtype == clip.coef.dtype else clip.coef.to(grads[0].dtype)
            torch._foreach_mul_(list(grads), coef)

    def __call__(self, params, grads, stats):  # type: ignore[no-untyped-def]
        norm = stats.global_norm
        if self._threshold is None or self._threshold.device != norm.device:
            self._threshold = _scalar(self.max_norm, norm)
        return clip_by_norm(grads, norm, self._threshold)


class ValueClip:
    def __init__(self, clip_value: float) -> None:
        self.clip_value = clip_value

    def __call__(self, params, grads, stats):  # type: ignore[no-untyped-def]
        return clip_by_value(grads, stats.global_norm, self.clip_value)


class AGC:
    def __init__(self, clip_factor: float = 0.01, eps: float = 1e-3) -> None:
        self.clip_factor, self.eps = clip_factor, eps

    def __call__(self, params, grads, stats):  # type: ignore[no-untyped-def]
        return adaptive_clip(params, stats.global_norm, self.clip_factor, self.eps)


class AutoClip:
    """Clip by norm at a percentile of the history of global norms (Seetharaman et al. 2020).

    The history is a ring buffer on the device; non-finite norms are stored as NaN and ignored.
    """

    def __init__(self, percentile: float = 10.0, history: int = 1000) -> None:
        self.q = percentile / 100.0
        self.size = history
        self.buffer: Tensor | None = None
        self.count = 0

    def threshold(self, norm: Tensor) -> Tensor:
        if self.buffer is None or self.buffer.device != norm.device:
            self.buffer = torch.full((self.size,), math.nan, device=norm.device)
        clean = torch.where(torch.isfinite(norm), norm, torch.full_like(norm, math.nan))
        self.buffer[self.count % self.size] = clean
        self.count += 1
        filled = self.buffer[: min(self.count, self.size)]
        return torch.nanquantile(filled, self.q)

    def __call__(self, params, grads, stats):  # type: ignore[no-untyped-def]
        threshold = self.threshold(stats.global_norm)
        threshold = torch.where(torch.isnan(threshold), torch.full_like(threshold, math.inf),
                                threshold)
        return clip_by_norm(grads, stats.global_norm, threshold)


class ZClip:
    """Z-score adaptive clipping (Kumar et al. 2025, "ZClip").

    Tracks an EMA of the global norm's mean and variance. After ``warmup`` steps (whose norms
    seed the statistics, unclipped), a norm whose z-score exceeds ``z_threshold`` is clipped to
    ``mean + z_threshold * std``, and the EMA is updated with the clipped value so one spike
    does not inflate the statistics.
    """

    def __init__(self, alpha: float = 0.97, z_threshold: float = 2.5, warmup: int = 25) -> None:
        self.alpha, self.z, self.warmup = alpha, z_threshold, warmup
        self.count = 0
        self.warm: list[Tensor] = []
        self.mean: Tensor | None = None
        self.var: Tensor | None = None

    def __call__(self, params, grads, stats):  # type: ignore[no-untyped-def]
        norm = stats.global_norm
        self.count += 1
        if self.mean is None or self.var is None:
            self.warm.append(norm.detach().clone())
            if len(self.warm) >= self.warmup:
                history = torch.stack(self.warm)
                history = torch.where(torch.isfinite(history), history,
                                      torch.full_like(history, math.nan))
                self.mean = history.nanmean()
                self.var = (history - self.mean).pow(2).nanmean()
                self.warm = []
            one = torch.ones_like(norm)
            return ClipResult(one, torch.full_like(one, math.nan))
        std = self.var.clamp_min(1e-12).sqrt()
        threshold = self.mean + self.z * std
        result = clip_by_norm(grads, norm, threshold)
        clipped = torch.minimum(norm, threshold)
        finite = torch.isfinite(clipped)
        delta = clipped - self.mean
        new_mean = self.alpha * self.mean + (1 - self.alpha) * clipped
        new_var = self.alpha * self.var + (1 - self.alpha) * delta * delta
        self.mean = torch.where(finite, new_mean, self.mean)
        self.var = torch.where(finite, new_var, self.var)
        return result


def make_clipper(config: StabilityConfig) -> Clipper:
    """The clipper a config selects."""
    method = config.clip_method
    if method == "norm":
        return NormClip(config.clip_threshold)
    if method == "value":
        return ValueClip(config.clip_threshold)
    if method == "agc":
        return AGC(config.agc_clip_factor, config.agc_eps)
    if method == "autoclip":
        return AutoClip(config.autoclip_percentile, config.autoclip_history)
    if method == "zclip":
        return ZClip(config.zclip_alpha, config.zclip_z_threshold, config.zclip_warmup)
    return NoClip()


def standardize_grads(grads: Sequence[Tensor], stats: GradStats, layer_index: Tensor,
                      eps: float = 1e-8) -> GradStats:
    """Gradient standardisation: scale each layer's gradient to unit L2 norm.

    Reuses the measured per-layer norms and returns the statistics of the standardised
    gradients (computed from the old ones, without another pass).
    """
    factors = 1.0 / (stats.layer_norms + eps)
    per_param = factors[layer_index]
    if grads:
        torch._foreach_mul_(list(grads), list(per_param.to(grads[0].dtype).unbind(0)))
    param_norms = stats.param_norms * per_param
    layer_norms = stats.layer_norms * factors
    global_norm = layer_norms.pow(2).sum().sqrt()
    return GradStats(global_norm, layer_norms, param_norms, stats.nonfinite, stats.norm_type)
