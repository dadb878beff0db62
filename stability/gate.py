"""The on-device skip decision: drop the update of an anomalous step without a host sync.

The host-side detectors see a step only at the sync cadence (every 10 steps on a GPU), too late
to keep a bad update out of the weights. :class:`SkipGate` decides on the device, before
``optimizer.step()``: a step is skipped when its loss or gradients are non-finite, or (with
``spikes``) when the log of its global gradient norm jumps above an EMA of the log-norm by more
than ``z_threshold`` standard deviations and at least ``min_ratio`` (ZClip's z-score, OLMo-core's
skip-step rule). Everything is a 0-d tensor op; the optimizer takes the decision as its
``found_inf`` (torch's fused SGD / Adam / AdamW skip the update on device, as under AMP).
Where the guard reads every step on the host anyway (``sync_every=1``, the CPU default),
:meth:`SkipGate.decide_host` makes the same decision on the step's host values instead: the
same arithmetic on Python floats, without the ~20 tensor ops.

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
        warmup: steps whose plain mean and variance (of the finite ones) seed the EMA; no
            spike is skipped before.
    """

    def __init__(self, device: torch.device, *, spikes: bool, alpha: float = 0.97,
                 z_threshold: float = 6.0, min_ratio: float = 4.0, warmup: int = 25) -> None:
        self.spikes = spikes
        self.alpha, self.z_threshold, self.warmup = alpha, z_threshold, warmup
        self._log_min_ratio = math.log(min_ratio)
        zero = torch.zeros((), device=device, dtype=torch.float64)
        self._count = zero.clone()  # finite log-norms seen during the warm-up
        self._mean = zero.clone()
        self._var = zero.clone()  # Welford M2 during the warm-up, the EMA variance after
        self._steps = 0  # host counter: the phase is known without looking at the device
        self._host = [0.0, 0.0, 0.0]  # count, mean, var of decide_host

    @property
    def warming_up(self) -> bool:
        """True while the next device decision still seeds the statistics (a host branch)."""
        return self._steps < self.warmup

    def __call__(self, loss: Tensor, norm: Tensor, nonfinite: Tensor) -> Tensor:
        """A 0-d bool tensor: True when this step's update must not be applied."""
        # inf/NaN in the loss or any gradient (the global norm carries it) poison the sum
        bad = ~torch.isfinite(loss.reshape(()).double() + norm)
        if not self.spikes:
            return bad
        self._steps += 1
        y = torch.where(bad, self._mean, torch.log(norm.double().clamp_min(1e-300)))
        if self._steps <= self.warmup:
            # Welford over the finite steps; a non-finite one leaves y = mean: delta 0
            self._count.add_(~bad)
            delta = y - self._mean
            self._mean.add_(delta / self._count.clamp_min(1.0))
            self._var.addcmul_(delta, y - self._mean)
            if self._steps == self.warmup:
                self._var.div_(self._count.clamp_min(1.0))  # M2 -> the variance
            return bad
        limit = (self._var.sqrt() * self.z_threshold).clamp_min(self._log_min_ratio)
        dev = y - self._mean
        spike = dev > limit
        # the EMA takes a spike clamped to the limit (ZClip): a level shift is absorbed, an
        # explosion keeps outrunning it
        dev = torch.minimum(dev, limit)
        a = self.alpha
        self._mean.add_(dev, alpha=1.0 - a)
        self._var.addcmul_(dev, dev, value=1.0 - a).mul_(a)
        return bad | spike

    def decide_host(self, loss: float, norm: float) -> bool:
        """:meth:`__call__` on host values (the state is kept apart from the device one)."""
        bad = not math.isfinite(loss + norm)
        if not self.spikes:
            return bad
        self._steps += 1
        count, mean, var = self._host
        y = mean if bad else math.log(max(norm, 1e-300))
        if self._steps <= self.warmup:
            count += not bad
            delta = y - mean
            mean += delta / max(count, 1.0)
            var += delta * (y - mean)
            if self._steps == self.warmup:
                var /= max(count, 1.0)
            self._host = [count, mean, var]
            return bad
        limit = max(math.sqrt(max(var, 0.0)) * self.z_threshold, self._log_min_ratio)
        dev = y - mean
        spike = dev > limit
        dev = min(dev, limit)
        a = self.alpha
        self._host = [count, mean + (1.0 - a) * dev, a * (var + (1.0 - a) * dev * dev)]
        return bad or spike
