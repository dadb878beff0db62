"""Numeric precision: fp32, bf16 autocast, fp16 autocast with dynamic loss scaling, and
``fp16_noscale`` (fp16 autocast without loss scaling: small gradients underflow to zero and an
overflow is not skipped by a scaler; for reproducing Micikevicius et al. 2018, not for use).

The guard runs the model's forward under autocast by hooking the model itself, so a user's loop
needs no ``with`` block; the loss (computed outside the model) stays in fp32. fp16 uses
``torch.amp.GradScaler``: a step whose gradients overflow is skipped and counted, the scale backs
off, and the scale is traced (defaults: init 2**16, growth 2, backoff 0.5, interval 2000).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from stability.config import StabilityConfig

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp16_noscale": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for a precision name (None for fp32)."""
    return _DTYPES.get(precision)


def autocast(precision: str, device_type: str) -> torch.autocast:
    """An autocast context for the precision (disabled for fp32)."""
    dtype = autocast_dtype(precision)
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


class AutocastHooks:
    """Runs a module's forward under autocast via forward pre/post hooks.

    Only the outermost call enters autocast, so re-entrant forwards (a module calling itself, or
    nested hooked modules) are safe.
    """

    def __init__(self, module: nn.Module, precision: str, device_type: str) -> None:
        self.precision, self.device_type = precision, device_type
        self._stack: list[Any] = []
        self._handles: list[RemovableHandle] = []
        if autocast_dtype(precision) is not None:
            self._handles = [
                module.register_forward_pre_hook(self._enter),
                module.register_forward_hook(self._exit, always_call=True),
            ]

    def _enter(self, module: nn.Module, args: Any) -> None:
        ctx = autocast(self.precision, self.device_type)
        ctx.__enter__()
        self._stack.append(ctx)

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack:
            self._stack.pop().__exit__(None, None, None)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def make_grad_scaler(config: StabilityConfig, device_type: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16, None otherwise (``fp16_noscale`` included: it has none)."""
    if config.precision != "fp16":
        return None
    return torch.amp.GradScaler(
        device_type,
        init_scale=config.loss_scale_init,
        growth_interval=config.loss_scale_growth_interval,
    )


def scale_tensor(scaler: torch.amp.GradScaler | None, like: torch.Tensor) -> torch.Tensor:
    """The current loss scale as a 0-d device tensor (1.0 without a scaler), without a sync."""
    scale = getattr(scaler, "_scale", None) if scaler is not None else None
    if scale is None:
        return torch.ones((), device=like.device)
    return scale.detach().reshape(()).clone()
