"""stability.optim: the optimizer and lr schedule a StabilityConfig asks for.

The optimizers are fused wherever torch has a kernel for the parameters' device: the guard
hands a fused optimizer its skip decision as ``found_inf`` and the update is dropped on device.
These tests pin what that needs: the right class and settings, ``found_inf`` honoured, momentum
buffers that start at zero so a skipped first step leaves nothing behind, and the same
trajectory as torch's unfused optimizers otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from stability.config import ConfigError, StabilityConfig
from stability.optim import build_optimizer, build_scheduler, lr_factor


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))


def grads_for(step: int, params: list[nn.Parameter]) -> list[torch.Tensor]:
    """A fixed, different gradient per step (no autograd: the optimizers alone are tested)."""
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=gen) for p in params]


def set_grads(params: list[nn.Parameter], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()


def fused_step(opt: torch.optim.Optimizer, skip: bool) -> None:
    """One step the way the guard takes it: the skip decision as a device ``found_inf``."""
    box: Any = opt
    box.grad_scale, box.found_inf = None, torch.tensor(1.0 if skip else 0.0)
    try:
        opt.step()
    finally:
        del box.grad_scale, box.found_inf


def step_both(opt: torch.optim.Optimizer, params: list[nn.Parameter],
              reference: torch.optim.Optimizer, ref_params: list[nn.Parameter],
              step: int) -> None:
    """The same gradients into both models, then a step of each optimizer."""
    set_grads(params, grads_for(step, params))
    set_grads(ref_params, grads_for(step, ref_params))
    fused_step(opt, skip=False)
    reference.step()


def snapshot(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


# ------------------------------------------------------------------ which optimizer
@pytest.mark.parametrize(("name", "cls", "nesterov"), [
    ("sgd", torch.optim.SGD, False),
    ("sgd_nesterov", torch.optim.SGD, True),
    ("adam", torch.optim.Adam, None),
    ("adamw", torch.optim.AdamW, None),
])
def test_each_optimizer_is_built_fused_with_the_configs_settings(
        name: str, cls: type, nesterov: bool | None) -> None:
    config = StabilityConfig(optimizer=name, lr=0.02, momentum=0.8, beta1=0.7, beta2=0.95,
                             eps=1e-6, weight_decay=0.01)
    opt = build_optimizer(model().parameters(), config)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.02 and group["weight_decay"] == 0.01
    assert group["fused"] is True
    # what the guard checks to hand the skip decision over as found_inf
    assert getattr(opt, "_step_supports_amp_scaling", False) is True
    if nesterov is None:
        assert group["betas"] == (0.7, 0.95) and group["eps"] == 1e-6
    else:
        assert group["momentum"] == 0.8 and group["nesterov"] is nesterov
        assert group["dampening"] == 0


def test_a_generator_of_parameters_is_read_once_into_one_group() -> None:
    """``model.parameters()`` is a generator: every parameter, biases included, lands in the
    one param group with the config's weight decay (nothing is excluded from decay)."""
    net = model()
    opt = build_optimizer(net.parameters(), StabilityConfig(weight_decay=0.1))
    assert len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert [id(p) for p in group["params"]] == [id(p) for p in net.parameters()]
    assert len(group["params"]) == 4 and group["weight_decay"] == 0.1


def test_parameters_without_a_fused_kernel_get_the_plain_optimizer() -> None:
    """Complex parameters (not floating point) and the meta device have no fused kernel."""
    complex_param = nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    for params in ([complex_param], [nn.Parameter(torch.zeros(3, device="meta"))]):
        for name in ("sgd", "adamw"):
            opt = build_optimizer(params, StabilityConfig(optimizer=name, momentum=0.9))
            assert opt.param_groups[0]["fused"] is False
            assert not getattr(opt, "_step_supports_amp_scaling", False)
            assert not opt.state  # unfused SGD makes its own buffer on the first step


# ------------------------------------------------------------------ SGD momentum buffers
@pytest.mark.parametrize("name", ["sgd", "sgd_nesterov"])
def test_fused_sgd_momentum_buffers_start_at_zero(name: str) -> None:
    net = model()
    opt = build_optimizer(net.parameters(), StabilityConfig(optimizer=name, momentum=0.9))
    params = list(net.parameters())
    assert len(opt.state) == len(params)
    for p in params:
        buf = opt.state[p]["momentum_buffer"]
        assert buf.shape == p.shape and buf.dtype == p.dtype
        assert torch.count_nonzero(buf) == 0
        assert buf.data_ptr() != p.data_ptr()  # its own storage, not a view of the weights


def test_sgd_without_momentum_keeps_no_buffers() -> None:
    net = model()
    opt = build_optimizer(net.parameters(), StabilityConfig(optimizer="sgd", momentum=0.0))
    assert not opt.state
    params = list(net.parameters())
    before = snapshot(params)
    set_grads(params, grads_for(0, params))
    fused_step(opt, skip=False)
    for p, b, g in zip(params, before, grads_for(0, params)):
        torch.testing.assert_close(p.detach(), b - 1e-3 * g)


@pytest.mark.parametrize("name", ["sgd", "sgd_nesterov"])
def test_skipped_first_sgd_step_applies_nothing_and_leaves_no_momentum(name: str) -> None:
    """A first step dropped with found_inf changes neither the weights nor the momentum;
    the run then follows torch's unfused SGD exactly as if that step never happened."""
    config = StabilityConfig(optimizer=name, lr=0.05, momentum=0.9, weight_decay=0.01)
    net, ref_net = model(), model()
    params, ref_params = list(net.parameters()), list(ref_net.parameters())
    opt = build_optimizer(params, config)
    reference = torch.optim.SGD(ref_params, lr=0.05, momentum=0.9, nesterov=name != "sgd",
                                weight_decay=0.01, foreach=False)
    start = snapshot(params)

    set_grads(params, [torch.full_like(p, 1e6) for p in params])  # the bad step
    fused_step(opt, skip=True)
    for p, s in zip(params, start):
        assert torch.equal(p.detach(), s)
    for p in params:
        assert torch.count_nonzero(opt.state[p]["momentum_buffer"]) == 0

    for step in range(1, 4):
        step_both(opt, params, reference, ref_params, step)
        for p, q in zip(params, ref_params):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"],
                                   reference.state[q]["momentum_buffer"], rtol=1e-6, atol=1e-7)


def test_a_skip_in_the_middle_of_sgd_freezes_weights_and_momentum() -> None:
    net = model()
    params = list(net.parameters())
    opt = build_optimizer(params, StabilityConfig(optimizer="sgd", lr=0.05, momentum=0.9))
    set_grads(params, grads_for(1, params))
    fused_step(opt, skip=False)
    weights = snapshot(params)
    buffers = [opt.state[p]["momentum_buffer"].clone() for p in params]
    assert any(torch.count_nonzero(b) for b in buffers)
    set_grads(params, grads_for(2, params))
    fused_step(opt, skip=True)
    for p, w, b in zip(params, weights, buffers):
        assert torch.equal(p.detach(), w)
        assert torch.equal(opt.state[p]["momentum_buffer"], b)


# ------------------------------------------------------------------ Adam / AdamW
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_skipped_first_adam_step_applies_nothing(name: str) -> None:
    """found_inf drops the update and the step count: the next step is Adam's first one
    (bias correction with t = 1), as torch's unfused optimizer takes it."""
    config = StabilityConfig(optimizer=name, lr=0.01, weight_decay=0.1)
    net, ref_net = model(), model()
    params, ref_params = list(net.parameters()), list(ref_net.parameters())
    opt = build_optimizer(params, config)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    reference = cls(ref_params, lr=0.01, weight_decay=0.1, foreach=False)
    start = snapshot(params)

    set_grads(params, [torch.full_like(p, math.inf) for p in params])
    fused_step(opt, skip=True)
    for p, s in zip(params, start):
        assert torch.equal(p.detach(), s)

    for step in range(1, 4):
        step_both(opt, params, reference, ref_params, step)
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
        assert float(opt.state[p]["step"]) == 3.0


def test_adamw_decays_weights_decoupled_and_adam_through_the_gradient() -> None:
    """With a zero gradient, AdamW shrinks each weight by exactly lr x weight_decay, while
    Adam's L2 term goes through the normalised update (a step of ~lr, whatever the weight)."""
    lr, wd = 0.01, 0.5
    for name in ("adamw", "adam"):
        net = model()
        params = list(net.parameters())
        before = snapshot(params)
        opt = build_optimizer(params, StabilityConfig(optimizer=name, lr=lr, weight_decay=wd))
        set_grads(params, [torch.zeros_like(p) for p in params])
        fused_step(opt, skip=False)
        for p, b in zip(params, before):
            if name == "adamw":
                torch.testing.assert_close(p.detach(), b * (1 - lr * wd))
            else:
                moved = (b - p.detach())[b != 0]
                torch.testing.assert_close(moved, lr * torch.sign(b[b != 0]),
                                           rtol=1e-3, atol=1e-6)


def test_sgd_weight_decay_is_added_to_the_gradient() -> None:
    lr, wd = 0.1, 0.5
    net = model()
    params = list(net.parameters())
    before = snapshot(params)
    opt = build_optimizer(params, StabilityConfig(optimizer="sgd", lr=lr, momentum=0.9,
                                                  weight_decay=wd))
    set_grads(params, [torch.zeros_like(p) for p in params])
    fused_step(opt, skip=False)
    for p, b in zip(params, before):  # first step: buf = wd * w, w -= lr * buf
        torch.testing.assert_close(p.detach(), b * (1 - lr * wd))


# ------------------------------------------------------------------ lr schedule
def test_lr_factor_warmup_is_linear_to_one() -> None:
    config = StabilityConfig(warmup_steps=4)
    assert [lr_factor(s, config, 100) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(2, config, None) == 0.75  # warm-up needs no run length


@pytest.mark.parametrize(("schedule", "middle"), [("cosine", 0.55), ("linear", 0.55)])
def test_lr_factor_decays_from_one_to_the_floor_after_warmup(schedule: str,
                                                             middle: float) -> None:
    config = StabilityConfig(warmup_steps=10, schedule=schedule, min_lr_ratio=0.1)
    total = 110  # 100 decay steps after the warm-up
    assert lr_factor(10, config, total) == pytest.approx(1.0)
    assert lr_factor(60, config, total) == pytest.approx(middle)  # halfway: 0.1 + 0.9 / 2
    assert lr_factor(110, config, total) == pytest.approx(0.1)
    assert lr_factor(500, config, total) == pytest.approx(0.1)  # past the end: the floor
    quarter = lr_factor(35, config, total)
    if schedule == "cosine":
        assert quarter == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    else:
        assert quarter == pytest.approx(0.1 + 0.9 * 0.75)


def test_constant_schedule_and_unknown_run_length_keep_the_full_lr() -> None:
    assert lr_factor(50, StabilityConfig(schedule="constant"), 100) == 1.0
    assert lr_factor(50, StabilityConfig(schedule="cosine"), None) == 1.0


def test_build_scheduler_sets_the_lr_each_step() -> None:
    config = StabilityConfig(lr=0.2, warmup_steps=2, schedule="linear", min_lr_ratio=0.0)
    opt = build_optimizer(model().parameters(), config)
    scheduler = build_scheduler(opt, config, total_steps=6)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert lrs == pytest.approx([0.1, 0.2, 0.2, 0.15, 0.1, 0.05, 0.0])


def test_a_decaying_schedule_without_the_run_length_is_a_config_error() -> None:
    config = StabilityConfig(schedule="cosine")
    opt = build_optimizer(model().parameters(), config)
    with pytest.raises(ConfigError, match="schedule 'cosine' needs the run length"):
        build_scheduler(opt, config, total_steps=None)
    constant = StabilityConfig(schedule="constant")
    assert build_scheduler(build_optimizer(model().parameters(), constant), constant,
                           None).get_last_lr() == [constant.lr]
