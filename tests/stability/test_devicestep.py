"""The guard's fused post-backward step (stability.devicestep): on CUDA it is replayed as a
CUDA graph; here it runs eagerly (``device_step=True``), the same function the GPU captures,
and must give the eager guard's trace and weights bit for bit."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from stability import StabilityGuard
from stability import trace as tr
from stability.config import StabilityConfig
from stability.workloads import load_workload

ARGS = {"depth": 6, "width": 16, "batch_size": 16}


def _run(config: StabilityConfig, sync_every: int, device_step: bool | None, steps: int = 60
         ) -> tuple[pd.DataFrame, list[torch.Tensor], StabilityGuard]:
    """deep_mlp with an inf gradient at step 15 and a x1e6 gradient spike at step 40."""
    workload = load_workload("deep_mlp", seed=0, **ARGS)
    model = workload.model()
    guard = StabilityGuard(model, config, sync_every=sync_every, device_step=device_step,
                           total_steps=steps)
    params = list(model.parameters())
    batches = iter(workload.batches())
    for i in range(steps):
        hooks = []
        if i == 15:
            hooks = [params[0].register_hook(lambda g: g * float("inf"))]
        elif i == 40:
            hooks = [p.register_hook(lambda g: g * 1e6) for p in params]
        stop = guard.step(workload.loss(model, next(batches)))
        for hook in hooks:
            hook.remove()
        if stop:
            break
    trace = guard.trace()
    guard.close()
    return trace, [p.detach().clone() for p in params], guard


CONFIGS = [
    StabilityConfig(optimizer="adamw", lr=1e-3, clip_method="norm", clip_threshold=1.0),
    StabilityConfig(optimizer="sgd", lr=1e-2, momentum=0.9, clip_method="none",
                    schedule="cosine", warmup_steps=5),
    StabilityConfig(optimizer="adam", lr=1e-3, on_spike="stop", precision="bf16"),
]


@pytest.mark.parametrize("sync_every", [1, 7, 10])
@pytest.mark.parametrize("config", CONFIGS, ids=["adamw-norm", "sgd-none-cosine", "adam-bf16"])
def test_the_device_step_matches_the_eager_step_bit_for_bit(config: StabilityConfig,
                                                            sync_every: int) -> None:
    eager_trace, eager_weights, eager = _run(config, sync_every, device_step=False)
    fused_trace, fused_weights, fused = _run(config, sync_every, device_step=True)
    assert fused.device_step is not None and eager.device_step is None
    pd.testing.assert_frame_equal(fused_trace, eager_trace, check_exact=True)
    for a, b in zip(fused_weights, eager_weights, strict=True):
        assert torch.equal(a, b)
    assert fused.skipped_count == eager.skipped_count
    if config.on_spike == "skip":  # the inf step and the spike were dropped, nothing else
        assert fused.skipped_count == 2
        assert fused_trace.loc[fused_trace["skipped"], "step"].tolist() == [15, 40]


def test_an_early_sync_rewinds_the_device_row() -> None:
    workload = load_workload("deep_mlp", seed=0, **ARGS)
    model = workload.model()
    guard = StabilityGuard(model, StabilityConfig(optimizer="adamw", lr=1e-3), sync_every=10,
                           device_step=True)
    batches = iter(workload.batches())
    losses = []
    for i in range(23):
        loss = workload.loss(model, next(batches))
        losses.append(float(loss.detach()))
        guard.step(loss)
        if i in (2, 13):
            guard.sync()  # e.g. trainer's report cadence differing from sync_every
    trace = guard.trace()
    assert trace["loss"].tolist() == pytest.approx(losses, rel=1e-6)
    assert trace["step"].tolist() == list(range(23))


@pytest.mark.parametrize("changes, reason", [
    ({"precision": "fp16"}, "GradScaler"),
    ({"clip_method": "value", "clip_threshold": 1.0}, "clip_method value"),
    ({"clip_method": "zclip"}, "clip_method zclip"),
    ({"grad_standardize": True}, "grad_standardize"),
])
def test_configs_the_device_step_cannot_run_say_why(changes: dict, reason: str) -> None:
    model = torch.nn.Linear(3, 2)
    config = StabilityConfig(**changes)
    guard = StabilityGuard(model, config)  # auto: falls back to the eager step
    assert guard.device_step is None and reason in (guard.device_step_off or "")
    with pytest.raises(ValueError, match=reason):
        StabilityGuard(model, config, device_step=True)


def test_on_cpu_the_default_is_the_eager_step() -> None:
    guard = StabilityGuard(torch.nn.Linear(3, 2), StabilityConfig())
    assert guard.device_step is None and "CUDA" in (guard.device_step_off or "")


def test_a_compiled_model_has_the_plain_models_layer_names() -> None:
    workload = load_workload("transformer_lm", seed=0, n_layers=2, d_model=16, n_heads=2,
                             seq_len=8, batch_size=2)
    model = workload.model()
    plain = StabilityGuard(model, StabilityConfig(), apply_init=False).layer_names
    compiled = torch.compile(model, backend="eager")
    guard = StabilityGuard(compiled, StabilityConfig(), apply_init=False)
    assert guard.layer_names == plain
    assert not any("_orig_mod" in name for name in guard.layer_names)
    # compiled blocks inside a plain model: the wrapper part goes from the middle too
    model.blocks[0] = torch.compile(model.blocks[0], backend="eager")
    assert StabilityGuard(model, StabilityConfig(), apply_init=False).layer_names == plain
    guard.step(workload.loss(compiled, next(iter(workload.batches()))))
    guard.close()
    assert list(guard.trace().columns[-len(plain):]) == list(tr.columns_for(plain))
