"""The on-device skip decision: drop the update of an anomalous step without a host sync.

The host-side detectors see a step only at the sync cadence (every 10 steps on a GPU), too late
to keep a bad update out of the weights. :class:`SkipGate` decides on the device, before
``optimizer.step()``: a step is skipped when its loss or gradients are non-finite, or (with
``spikes``) when the log of its global gradient norm jumps above an EMA of the log-norm by more
than ``z_threshold`` standard deviations and at least ``min_ratio`` (ZClip's z-score, OLMo-core's
skip-step rule). Everything is a 0-d tensor op; the optimizer takes the decision as its
``found_inf`` (torch's fused SGD / Adam / AdamW skip the update on device, as under AMP).

The statistics live in log space, so multiplying every norm by a constant shifts the mean and
leaves every decision unchanged (scale-free). A skipped spike updates the EMA with the clamped
value (as ZClip does): a lasting level shift is absorbed within a few steps, an explosion keeps
outrunning it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class SkipGate:
    """Decides per step, on device, whether to skip the update.

    Args:
        spikes: also skip gradient-norm spikes (``on_spike: skip``); else only non-finite steps.
        alpha: EMA decay of the log-norm mean and variance.
        z_threshold: a spike is ``z_threshold`` standard deviations above the mean ...
        min_ratio: ... and at least this factor above ``exp(mean)``.
        warmup: finite steps whose plain mean and variance seed the EMA; no spike before.
    """

    def __init__(self, device: torch.device, *, spikes: bool, alpha: float = 0.97,
                 z_threshold: float = 6.0, min_ratio: float = 4.0, warmup: int = 25) -> None:
        self.spikes = spikes
        self.alpha, self.z_threshold, self.warmup = alpha, z_threshold, warmup
        self._log_min_ratio = math.log(min_ratio)
        zero = torch.zeros((), device=device, dtype=torch.float64)
        self._count = zero.clone()  # finite log-norms seen
        self._mean = zero.clone()
        self._m2 = zero.clone()  # Welford M2 during warm-up, EMA variance after
        self._steps = 0  # host counter: steps seen (an upper bound of _count)

    def __call__(self, loss: Tensor, norm: Tensor, nonfinite: Tensor) -> Tensor:
        """A 0-d bool tensor: True when this step's update must not be applied."""
        bad = ~torch.isfinite(loss.reshape(())) | ~torch.isfinite(norm) | (nonfinite > 0)
        if not self.spikes:
            return bad
        self._steps += 1
        y = torch.log(norm.to(torch.float64).clamp_min(1e-300))
        usable = ~bad
        if self._steps <= self.warmup:  # no decision can be made before warmup finite steps
            self._welford(y, usable)
            return bad
        warm = self._count >= self.warmup
        std = torch.sqrt(self._m2.clamp_min(0.0))  # the EMA variance once warm
        limit = torch.maximum(self.z_threshold * std,
                              torch.full_like(std, self._log_min_ratio))
        spike = warm & usable & (y - self._mean > limit)
        # Before the EMA takes over, keep accumulating the plain statistics.
        self._welford(y, usable & ~warm)
        self._ema(torch.where(spike, self._mean + limit, y), usable & warm)
        return bad | spike

    def _welford(self, y: Tensor, take: Tensor) -> None:
        count = self._count + take.to(torch.float64)
        delta = torch.where(take, y - self._mean, torch.zeros_like(y))
        mean = self._mean + delta / count.clamp_min(1)
        self._m2 = torch.where(
            take & (count >= self.warmup),
            # the last warm-up value: turn M2 into the variance the EMA starts from
            (self._m2 + delta * (y - mean)) / count.clamp_min(1),
            self._m2 + delta * torch.where(take, y - mean, torch.zeros_like(y)))
        self._mean, self._count = mean, count

    def _ema(self, y: Tensor, take: Tensor) -> None:
        a = self.alpha
        delta = y - self._mean
        mean = self._mean + (1 - a) * delta
        var = a * (self._m2 + (1 - a) * delta * delta)
        self._mean = torch.where(take, mean, self._mean)
        self._m2 = torch.where(take, var, self._m2)
