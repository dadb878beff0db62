"""Optimizer and learning-rate schedule from a StabilityConfig."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from stability.config import ConfigError, StabilityConfig


def build_optimizer(params: Iterable[nn.Parameter], config: StabilityConfig
                    ) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov), Adam or AdamW with the config's settings.

    Fused where torch has a fused kernel for the parameters' device (CPU, CUDA, MPS): a fused
    optimizer takes a ``found_inf`` tensor and drops the update on device, which is how the
    guard skips a bad step without a host sync.
    """
    params = list(params)
    fused = _fusable(params)
    if config.optimizer in ("sgd", "sgd_nesterov"):
        nesterov = config.optimizer == "sgd_nesterov"
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=nesterov,
            weight_decay=config.weight_decay, fused=fused)
        if fused and config.momentum > 0:
            # Fused SGD allocates its momentum buffers uninitialised on the first call and
            # keeps them even when that step is skipped: start them at zero instead (with
            # no dampening, the first update is then exactly the unfused one, buf = grad).
            for p in params:
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
        return opt
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
               weight_decay=config.weight_decay, fused=fused)


def _fusable(params: list[nn.Parameter]) -> bool:
    devices = {p.device.type for p in params}
    return (len(devices) == 1 and devices <= {"cpu", "cuda", "mps"}
            and all(p.is_floating_point() for p in params))


def lr_factor(step: int, config: StabilityConfig, total_steps: int | None) -> float:
    """Multiplier of ``config.lr`` at an optimizer step: linear warm-up, then the schedule."""
    warmup = config.warmup_steps
    if warmup and step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant" or not total_steps:
        return 1.0
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    floor = config.min_lr_ratio
    if config.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * (1 - progress)


def build_scheduler(optimizer: torch.optim.Optimizer, config: StabilityConfig,
                    total_steps: int | None) -> torch.optim.lr_scheduler.LambdaLR:
    if config.schedule != "constant" and not total_steps:
        raise ConfigError(
            f"schedule {config.schedule!r} needs the run length: pass total_steps "
            "(or use schedule: constant)."
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config, total_steps))
