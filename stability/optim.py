"""Optimizer and learning-rate schedule from a StabilityConfig."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from stability.config import ConfigError, StabilityConfig


def build_optimizer(params: Iterable[nn.Parameter], config: StabilityConfig
                    ) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov), Adam or AdamW with the config's settings."""
    params = list(params)
    if config.optimizer in ("sgd", "sgd_nesterov"):
        nesterov = config.optimizer == "sgd_nesterov"
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=nesterov, weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
               weight_decay=config.weight_decay)


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
