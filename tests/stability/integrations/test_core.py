"""StepWatcher under a GradScaler: the 16-mixed / fp16 path of both callbacks, which the
frameworks run only on a GPU, driven here by hand in the order they use (scale, backward,
unscale, watch, scaler.step, update)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from stability.config import StabilityConfig
from stability.integrations._core import StepWatcher
from stability.optim import build_optimizer

SPIKE_AT = 30  # after the skip gate's 25-step warm-up


def test_a_spike_under_a_grad_scaler_is_skipped_without_backing_off_the_scale() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    config = StabilityConfig(optimizer="adam", lr=1e-3, precision="fp16")
    optimizer = build_optimizer(model.parameters(), config)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    watcher = StepWatcher(model, config)
    gen = torch.Generator().manual_seed(1)
    weights = []
    for step in range(SPIKE_AT + 3):
        x = torch.randn(32, 8, generator=gen)
        y = torch.tanh(x.sum(1, keepdim=True))
        loss = F.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if step == SPIKE_AT:  # a finite gradient 10^4 times its usual size
            for p in model.parameters():
                assert p.grad is not None
                p.grad.mul_(1e4)
        scaler.unscale_(optimizer)
        watcher.before_step(loss, optimizer, scaler=scaler)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        weights.append(model[0].weight.detach().clone())
    trace = watcher.trace()
    assert trace["skipped"].tolist() == [i == SPIKE_AT for i in range(SPIKE_AT + 3)]
    assert not trace["overflow"].any()
    assert (trace["amp_scale"] == 2.0**10).all(), "our skip is not an overflow: no back-off"
    assert watcher.dropped_by == "no_grads"
    assert torch.equal(weights[SPIKE_AT], weights[SPIKE_AT - 1])
    assert not torch.equal(weights[SPIKE_AT + 1], weights[SPIKE_AT])
    assert optimizer.state[model[0].weight]["step"].item() == SPIKE_AT + 2
    assert watcher.verdict is None
