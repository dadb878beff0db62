"""Precision values: ``fp16_noscale`` is fp16 autocast without a GradScaler."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stability import StabilityGuard
from stability.config import PRECISIONS, ConfigError, StabilityConfig
from stability.precision import autocast_dtype, make_grad_scaler


def test_fp16_noscale_is_a_precision_with_fp16_autocast_and_no_scaler() -> None:
    assert "fp16_noscale" in PRECISIONS
    cfg = StabilityConfig(precision="fp16_noscale")
    assert autocast_dtype("fp16_noscale") is torch.float16
    assert make_grad_scaler(cfg, "cpu") is None
    assert isinstance(make_grad_scaler(StabilityConfig(precision="fp16"), "cpu"),
                      torch.amp.GradScaler)
    assert StabilityConfig.from_dict(cfg.to_dict()).precision == "fp16_noscale"
    with pytest.raises(ConfigError, match="fp16_noscale"):
        StabilityConfig(precision="fp8")


def _weight_grad(precision: str) -> torch.Tensor:
    """The weight gradient of a linear layer whose output gradient is 1e-9 per element:
    below fp16's smallest subnormal (6e-8) unless the loss is scaled."""
    torch.manual_seed(0)
    model = nn.Linear(8, 8)
    grads: list[torch.Tensor] = []
    model.weight.register_post_accumulate_grad_hook(lambda p: grads.append(p.grad.clone()))
    guard = StabilityGuard(model, StabilityConfig(precision=precision, optimizer="sgd",
                                                  lr=1e-3, on_spike="stop"))
    x = torch.randn(4, 8)
    out = model(x)
    assert out.dtype == torch.float32  # the model ran in fp16; its output leaves in fp32
    guard.step(out.float().sum() * 1e-9)
    guard.close()
    return grads[0]


def test_fp16_noscale_underflows_where_scaled_fp16_does_not() -> None:
    assert (_weight_grad("fp16_noscale") == 0).all()  # 1e-9 flushes to zero in fp16
    scaled = _weight_grad("fp16")  # x 2**16 at the fp16 boundary: representable
    assert (scaled != 0).float().mean() > 0.9
    assert (_weight_grad("fp32") != 0).float().mean() > 0.9
