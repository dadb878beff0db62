"""Numeric precision: fp32, bf16 autocast, fp16 autocast with dynamic loss scaling, and
``fp16_noscale`` (fp16 autocast without loss scaling: small gradients underflow to zero and an
overflow is not skipped by a scaler; for reproducing Micikevicius et al. 2018, not for use).

The guard runs the model's forward under autocast by hooking the model itself, so a user's loop
needs no ``with`` block. The model's floating-point outputs leave it in fp32 (as accelerate's
``convert_outputs_to_fp32`` does): the loss is computed outside the model, outside autocast, and
``F.mse_loss(pred_bf16, target_fp32)`` trains on the CPU but fails in backward on CUDA ("Found
dtype Float but expected BFloat16"). The rule for any workload, built-in or a user's: compute the
loss from the model's outputs and fp32 targets; the cast makes the dtypes agree. fp16 uses
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

    def _exit(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not self._stack:
            return None
        self._stack.pop().__exit__(None, None, None)
        if self._stack:  # an inner call of a re-entrant forward: the outermost one casts
            return None
        return outputs_to_fp32(output)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


_LOW = (torch.float16, torch.bfloat16)


def outputs_to_fp32(output: Any) -> Any:
    """``output`` with every fp16/bf16 tensor in it cast to fp32 (tensors, and tensors inside
    tuples, named tuples, lists and dicts, e.g. a ``ModelOutput``); anything else unchanged."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.dtype in _LOW else output
    if isinstance(output, tuple) and hasattr(output, "_fields"):  # a named tuple
        return type(output)(*(outputs_to_fp32(v) for v in output))
    if isinstance(output, (list, tuple)):
        return type(output)(outputs_to_fp32(v) for v in output)
    if isinstance(output, dict):
        cast = {k: outputs_to_fp32(v) for k, v in output.items()}
        try:
            return type(output)(**cast) if type(output) is not dict else cast
        except TypeError:  # a mapping type that is not built from keywords
            output.update(cast)
            return output
    return output


def mixed_dtype_error(exc: RuntimeError, precision: str) -> RuntimeError:
    """``exc`` from a backward, reworded when it is the mixed-dtype failure of autocast.

    CUDA kernels such as ``mse_loss``'s backward refuse a low-precision input next to an fp32
    one ("Found dtype Float but expected BFloat16"). The guard's hooks cast a model's outputs
    to fp32, so this means the loss met a low-precision tensor some other way: an output the
    cast cannot see into (an object that is not a tensor, tuple, list or dict), or a submodule
    called directly, outside the model's forward.
    """
    if autocast_dtype(precision) is None or "Found dtype" not in str(exc):
        return exc
    first = str(exc).strip().splitlines()[0]
    return RuntimeError(
        f"precision {precision}: the loss mixes low-precision and fp32 tensors ({first}); "
        "return the model's outputs as tensors, tuples, lists or dicts (the guard casts them to "
        "fp32), or call .float() on them before the loss.")


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
