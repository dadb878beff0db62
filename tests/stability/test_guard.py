from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stability.config import StabilityConfig
from stability.detectors import NullDetector
from stability.guard import StabilityGuard


def _data(seed: int = 0, n: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def test_trace_records_every_step_with_pre_clip_norms():
    model = _model()
    guard = StabilityGuard(model, StabilityConfig(clip_method="norm", clip_threshold=0.1,
                                                  optimizer="sgd", lr=0.1))
    x, y = _data()
    for _ in range(5):
        assert guard.step(nn.functional.mse_loss(model(x), y)) is False
    trace = guard.trace()
    assert list(trace["step"]) == [0, 1, 2, 3, 4]
    assert {"loss", "grad_norm", "lr", "clip_coef", "clip_threshold", "amp_scale", "overflow",
            "nonfinite", "grad_norm/00:Linear", "grad_norm/02:Linear"} <= set(trace.columns)
    row = trace.iloc[-1]
    # pre-clip global norm = sqrt of the sum of squared layer norms
    assert row["grad_norm"] == pytest.approx(math.hypot(row["grad_norm/00:Linear"],
                                                       row["grad_norm/02:Linear"]),
                                             rel=1e-5)
    assert row["clip_threshold"] == pytest.approx(0.1)
    assert row["clip_coef"] == pytest.approx(min(1, 0.1 / (row["grad_norm"] + 1e-6)), rel=1e-5)
    assert (trace["lr"] == 0.1).all()


def test_same_update_as_a_plain_loop_with_clip_grad_norm():
    x, y = _data()
    ref = _model()
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):
        opt.zero_grad()
        nn.functional.mse_loss(ref(x), y).backward()
        nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        opt.step()
    model = _model()
    guard = StabilityGuard(model, StabilityConfig(clip_method="norm", clip_threshold=0.5,
                                                  optimizer="sgd", lr=0.05, momentum=0.9))
    for _ in range(4):
        guard.step(nn.functional.mse_loss(model(x), y))
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_grad_accumulation_matches_one_big_batch():
    x, y = _data(n=16)
    big = _model()
    g1 = StabilityGuard(big, StabilityConfig(optimizer="sgd", lr=0.1, momentum=0.0))
    g1.step(nn.functional.mse_loss(big(x), y))
    small = _model()
    g4 = StabilityGuard(small, StabilityConfig(optimizer="sgd", lr=0.1, momentum=0.0,
                                               grad_accum_steps=4))
    for i in range(4):
        done = g4.step(nn.functional.mse_loss(small(x[i * 4:(i + 1) * 4]), y[i * 4:(i + 1) * 4]))
        assert done is False
        assert g4.accumulating == (i < 3)
    assert g4.step_count == 1
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert g4.trace()["loss"].iloc[0] == pytest.approx(g1.trace()["loss"].iloc[0], rel=1e-5)


def test_fp16_overflow_is_counted_and_step_skipped():
    model = _model()
    config = StabilityConfig(precision="fp16", optimizer="sgd", lr=0.1, loss_scale_init=2.0**16)
    guard = StabilityGuard(model, config, detector=NullDetector())
    x, y = _data()
    before = [p.detach().clone() for p in model.parameters()]
    # a loss whose scaled gradient overflows fp16 (and fp32 after scaling by 2**16 * 1e35)
    loss = nn.functional.mse_loss(model(x), y) * 1e35
    guard.step(loss)
    after = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(before, after):
        assert torch.equal(a, b), "an overflowed step must not change the weights"
    trace = guard.trace()
    assert bool(trace["overflow"].iloc[0]) is True
    assert guard.overflow_count == 1
    assert trace["amp_scale"].iloc[0] == 2.0**16  # scale before the backoff
    # next, a normal step: applied, and the traced scale has backed off by 0.5
    guard.step(nn.functional.mse_loss(model(x), y))
    trace = guard.trace()
    assert bool(trace["overflow"].iloc[1]) is False
    assert trace["amp_scale"].iloc[1] == 2.0**15
    assert any(not torch.equal(a, p) for a, p in zip(after, model.parameters()))
    assert guard.verdict is None


def test_forward_runs_under_autocast_via_hooks_and_loss_stays_fp32():
    model = _model()
    guard = StabilityGuard(model, StabilityConfig(precision="bf16", optimizer="adam"))
    x, _ = _data()
    inner: list[torch.dtype] = []
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    handle = first.register_forward_hook(lambda m, a, out: inner.append(out.dtype))
    assert model(x).dtype == torch.float32  # the output leaves autocast in fp32 ...
    assert inner == [torch.bfloat16]  # ... after the layers ran in bf16
    guard.close()
    assert model(x).dtype == torch.float32 and inner[-1] == torch.float32
    handle.remove()


def test_nonfinite_step_flagged_and_not_applied_on_cpu():
    model = _model()
    guard = StabilityGuard(model, StabilityConfig(optimizer="sgd", lr=0.1))
    x, y = _data()
    guard.step(nn.functional.mse_loss(model(x), y))
    snapshot = [p.detach().clone() for p in model.parameters()]
    exploded = guard.step(nn.functional.mse_loss(model(x), y) * math.inf)
    assert exploded is True
    assert guard.verdict is not None and guard.verdict.kind == "nonfinite"
    assert guard.verdict.step == 1
    for a, b in zip(snapshot, model.parameters()):
        assert torch.equal(a, b)
    assert guard.step(nn.functional.mse_loss(model(x), y)) is True  # stays stopped


def test_sync_cadence_defers_host_transfer():
    model = _model()
    synced: list[int] = []
    guard = StabilityGuard(model, StabilityConfig(), sync_every=4,
                           on_sync=lambda records: synced.append(len(records)))
    x, y = _data()
    for _ in range(6):
        guard.step(nn.functional.mse_loss(model(x), y))
    assert synced == [4]
    assert len(guard.trace()) == 6
    assert synced == [4, 2]


def test_from_yaml_two_lines(tmp_path):
    path = tmp_path / "best.yaml"
    StabilityConfig(clip_method="zclip", lr=1e-3, warmup_steps=10, schedule="cosine",
                    init="xavier_uniform").to_yaml(path, extra={"provenance": {"trial": 1}})
    model = _model()
    guard = StabilityGuard.from_yaml(path, model, total_steps=20)
    x, y = _data()
    for _ in range(3):
        guard.step(nn.functional.mse_loss(model(x), y))
    lrs = guard.trace()["lr"].tolist()
    assert lrs == pytest.approx([1e-4, 2e-4, 3e-4])  # linear warm-up over 10 steps


def test_schedule_without_total_steps_is_refused():
    with pytest.raises(ValueError, match="schedule 'cosine' needs the run length"):
        StabilityGuard(_model(), StabilityConfig(schedule="cosine"))
