"""Mixed precision on every workload: the model runs under autocast, its outputs leave in fp32.

On CUDA, ``F.mse_loss(pred_bf16, target_fp32)`` fails in backward ("Found dtype Float but
expected BFloat16"): deep_mlp and rnn_adding crashed at bf16 / fp16 / fp16_noscale on a GPU.
CPU autocast shows the same dtypes (it only tolerates the mix), so these CPU tests catch it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import pytest
import torch
from torch import nn

from stability import StabilityGuard
from stability.config import StabilityConfig
from stability.precision import AutocastHooks, outputs_to_fp32
from stability.workloads import load_workload

SMALL: dict[str, dict[str, Any]] = {
    "deep_mlp": {"depth": 4, "width": 16, "batch_size": 8},
    "rnn_adding": {"seq_len": 10, "hidden": 8, "batch_size": 4},
    "transformer_lm": {"n_layers": 1, "d_model": 16, "n_heads": 2, "seq_len": 8,
                       "batch_size": 2},
    "cnn_digits": {"batch_size": 4, "width": 4},
}
LOW = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp16_noscale": torch.float16}


def _inputs(name: str, batch: Any) -> Any:
    return batch[:, :-1] if name == "transformer_lm" else batch[0]


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp16_noscale"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_builtin_workloads_leave_autocast_in_fp32(name: str, precision: str) -> None:
    workload = load_workload(name, seed=0, **SMALL[name])
    model = workload.model()
    inner: list[torch.dtype] = []
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    linear.register_forward_hook(lambda m, a, out: inner.append(out.dtype))
    hooks = AutocastHooks(model, precision, "cpu")
    batch = next(iter(workload.batches()))
    out = model(_inputs(name, batch))
    assert inner[-1] == LOW[precision]  # the model itself ran in low precision
    assert out.dtype == torch.float32  # ... and its output matches fp32 targets
    loss = workload.loss(model, batch)
    assert loss.dtype == torch.float32
    hooks.remove()
    assert model(_inputs(name, batch)).dtype == torch.float32  # no autocast once removed


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp16_noscale"])
@pytest.mark.parametrize("name", ["deep_mlp", "rnn_adding"])
def test_mse_workloads_train_under_the_guard(name: str, precision: str) -> None:
    workload = load_workload(name, seed=0, **SMALL[name])
    model = workload.model()
    guard = StabilityGuard(model, StabilityConfig(optimizer="adamw", lr=1e-3,
                                                  precision=precision), apply_init=False)
    before = [p.detach().clone() for p in model.parameters()]
    batches = iter(workload.batches())
    for _ in range(5):
        guard.step(workload.loss(model, next(batches)))
    guard.close()
    assert guard.verdict is None and guard.step_count == 5
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


class Pair(NamedTuple):
    logits: torch.Tensor
    aux: torch.Tensor


def test_outputs_to_fp32_casts_low_precision_tensors_in_containers() -> None:
    half, bf = torch.ones(2, dtype=torch.float16), torch.ones(2, dtype=torch.bfloat16)
    ints, double = torch.arange(3), torch.ones(1, dtype=torch.float64)
    out = outputs_to_fp32({"a": half, "b": [bf, ints], "c": (double, "text")})
    assert out["a"].dtype == torch.float32 and out["b"][0].dtype == torch.float32
    assert out["b"][1].dtype == torch.int64  # integers and fp64 are left alone
    assert out["c"][0].dtype == torch.float64 and out["c"][1] == "text"
    pair = outputs_to_fp32(Pair(half, bf))
    assert isinstance(pair, Pair) and pair.logits.dtype == pair.aux.dtype == torch.float32
    ordered = outputs_to_fp32(OrderedDict(x=bf))
    assert isinstance(ordered, OrderedDict) and ordered["x"].dtype == torch.float32


def test_a_user_model_returning_a_dict_trains_at_bf16() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"pred": self.body(x)}

    torch.manual_seed(0)
    model = Net()
    guard = StabilityGuard(model, StabilityConfig(precision="bf16", optimizer="sgd", lr=0.1))
    out = model(torch.randn(3, 4))
    assert out["pred"].dtype == torch.float32
    guard.step(nn.functional.mse_loss(out["pred"], torch.zeros(3, 4)))
    guard.close()
    assert guard.step_count == 1 and guard.skipped_count == 0


class _RefusesMixedDtypes(torch.autograd.Function):
    """A loss whose backward fails as CUDA's mse_loss does on bf16 next to fp32."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("Found dtype Float but expected BFloat16")


def test_the_mixed_dtype_backward_error_names_the_fix() -> None:
    model = nn.Linear(4, 4)
    guard = StabilityGuard(model, StabilityConfig(precision="bf16"))
    loss = _RefusesMixedDtypes.apply(model(torch.randn(2, 4)))
    with pytest.raises(RuntimeError, match=r"precision bf16: the loss mixes .* \.float\(\)"):
        guard.step(loss)
    guard = StabilityGuard(model, StabilityConfig(precision="fp32"))
    with pytest.raises(RuntimeError, match=r"^Found dtype Float"):  # fp32: left as it is
        guard.step(_RefusesMixedDtypes.apply(model(torch.randn(2, 4))))
