"""on_spike: skip | stop, the on-device skip decision, and scale-free detection."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from stability import StabilityGuard
from stability import trace as tr
from stability.config import ConfigError, StabilityConfig
from stability.detectors import NullDetector, default_detector, replay
from stability.gate import SkipGate
from stability.records import StepRecord
from stability.trainer import train


class FaultyTask:
    """A small classifier whose batch at ``fault_step`` is corrupt (inputs x ``scale``, or NaN)."""

    name = "faulty"

    def __init__(self, fault_step: int | None = 60, scale: float = 1e4, seed: int = 0) -> None:
        self.fault_step, self.scale, self.seed = fault_step, scale, seed
        gen = torch.Generator().manual_seed(seed)
        self.centers = torch.randn(4, 8, generator=gen) * 2
        self._eval = self._draw(torch.Generator().manual_seed(seed + 1), 256)

    def _draw(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 4, (n,), generator=gen)
        return self.centers[y] + torch.randn(n, 8, generator=gen), y

    def model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                             nn.Linear(32, 4))

    def batches(self) -> Iterator[Any]:
        gen = torch.Generator().manual_seed(self.seed + 2)
        step = 0
        while True:
            x, y = self._draw(gen, 32)
            if step == self.fault_step:
                x = x * self.scale if math.isfinite(self.scale) else torch.full_like(x, math.nan)
            yield x, y
            step += 1

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"eval_loss": float(self.loss(model, self._eval))}


CONFIG = {"optimizer": "sgd", "lr": 0.05}


def test_one_step_data_fault_trains_on_with_skip_and_stops_with_stop() -> None:
    clean = train(FaultyTask(fault_step=None), CONFIG, steps=150, seed=0)
    skip = train(FaultyTask(), {**CONFIG, "on_spike": "skip"}, steps=150, seed=0)
    stop = train(FaultyTask(), {**CONFIG, "on_spike": "stop"}, steps=150, seed=0)
    assert clean.verdict is None
    assert skip.verdict is None and skip.steps_run == 150
    trace = skip.trace
    assert bool(trace["skipped"].iloc[60]) and int(trace["skipped"].sum()) <= 2
    # the corrupt update never reached the weights: it trains on to the clean run's level
    assert skip.final_eval["eval_loss"] < 2 * clean.final_eval["eval_loss"] + 0.05
    assert stop.verdict is not None and stop.verdict.step == 60
    assert stop.steps_run == 61


def test_spikes_that_do_not_settle_stop_a_skip_run_as_unsettled() -> None:
    # lr far too high: every step spikes once the gate has its baseline
    result = train(FaultyTask(fault_step=None), {"optimizer": "sgd", "lr": 30.0,
                                                 "on_spike": "skip", "spike_patience": 5},
                   steps=200, seed=0)
    assert result.verdict is not None
    assert result.verdict.kind in ("unsettled", "loss_divergence", "nonfinite", "growth")


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "sgd_nesterov"])
@pytest.mark.parametrize("on_spike", ["skip", "stop"])
def test_nonfinite_step_mid_sync_window_is_never_applied(optimizer: str, on_spike: str) -> None:
    task = FaultyTask(fault_step=5, scale=math.nan)
    model = task.model()
    config = StabilityConfig.from_dict({"optimizer": optimizer, "lr": 0.01,
                                        "on_spike": on_spike})
    guard = StabilityGuard(model, config, sync_every=10, detector=NullDetector())
    batches = task.batches()
    for step in range(8):  # the window's host sync comes only at step 9
        x, y = next(batches)
        guard.step(task.loss(model, (x, y)))
        if step == 4:
            before = [p.detach().clone() for p in model.parameters()]
        if step == 5:
            after_fault = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after_fault, strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    trace = guard.trace()
    assert trace["skipped"].tolist() == [False] * 5 + [True] + [False] * 2
    assert guard.skipped_count == 1


def test_fp16_overflow_still_backs_off_the_scale_and_skips() -> None:
    task = FaultyTask(fault_step=None)
    model = task.model()
    config = StabilityConfig.from_dict({"optimizer": "adam", "lr": 1e-3, "precision": "fp16",
                                        "loss_scale_init": 2.0**120})
    guard = StabilityGuard(model, config, detector=NullDetector())
    batches = task.batches()
    for _ in range(3):
        guard.step(task.loss(model, next(batches)))
    trace = guard.trace()
    assert trace["overflow"].iloc[0] and trace["skipped"].iloc[0]
    assert trace["amp_scale"].iloc[1] < 2.0**120  # backed off
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_on_spike_is_validated() -> None:
    with pytest.raises(ConfigError, match="on_spike must be one of skip, stop; got 'halt'"):
        StabilityConfig(on_spike="halt")
    with pytest.raises(ConfigError, match="spike_patience must be >= 1"):
        StabilityConfig(spike_patience=0)


# ------------------------------------------------------------------ scale-free detection
@pytest.fixture(scope="module")
def traces() -> list[pd.DataFrame]:
    """Real traces, trained to their end with no detector: stable, spiking and exploding."""
    out = []
    for config in ({"optimizer": "adam", "lr": 3e-3}, {"optimizer": "adam", "lr": 0.3},
                   {"optimizer": "sgd", "lr": 1.5}, {"optimizer": "sgd", "lr": 0.3,
                                                     "momentum": 0.0}):
        for seed in (0, 1):
            result = train("deep_mlp", config, steps=150, seed=seed, detector=NullDetector(),
                           workload_args={"depth": 8, "width": 16, "batch_size": 32})
            out.append(result.trace)
    out.append(train(FaultyTask(scale=300.0), CONFIG, steps=150, seed=0,
                     detector=NullDetector()).trace)
    return out


def _scaled(trace: pd.DataFrame, c: float) -> pd.DataFrame:
    scaled = trace.copy()
    columns = ["loss", "grad_norm"] + [col for col in trace.columns if tr.is_layer_column(col)]
    scaled[columns] = scaled[columns] * c
    return scaled


CONSTANTS = [2.0**-8, 2.0**16, *np.exp(np.random.default_rng(0).uniform(
    math.log(2.0**-8), math.log(2.0**16), 6)).tolist()]


@pytest.mark.parametrize("on_spike", ["stop", "skip"])
def test_verdicts_are_unchanged_when_the_loss_is_scaled(traces, on_spike: str) -> None:
    """Multiplying the loss (so every norm) by any constant in [2^-8, 2^16] leaves every
    verdict's step and kind as they were."""
    verdicts = [replay(default_detector(on_spike=on_spike), t) for t in traces]
    assert any(v is not None for v in verdicts) and any(v is None for v in verdicts)
    for c in CONSTANTS:
        for trace, expected in zip(traces, verdicts, strict=True):
            got = replay(default_detector(on_spike=on_spike), _scaled(trace, c))
            assert (got is None) == (expected is None), c
            if got is not None and expected is not None:
                assert (got.step, got.kind) == (expected.step, expected.kind), c


def test_skip_gate_decisions_are_unchanged_when_the_loss_is_scaled(traces) -> None:
    def decisions(trace: pd.DataFrame, c: float) -> list[bool]:
        gate = SkipGate(torch.device("cpu"), spikes=True)
        out = []
        for loss, norm in zip(trace["loss"] * c, trace["grad_norm"] * c, strict=True):
            out.append(bool(gate(torch.tensor(loss), torch.tensor(norm, dtype=torch.float32),
                                 torch.tensor(0))))
        return out

    def on_host(trace: pd.DataFrame, c: float) -> list[bool]:
        gate = SkipGate(torch.device("cpu"), spikes=True)
        return [gate.decide_host(float(loss), float(np.float32(norm)))
                for loss, norm in zip(trace["loss"] * c, trace["grad_norm"] * c, strict=True)]

    for trace in traces:
        expected = decisions(trace, 1.0)
        assert on_host(trace, 1.0) == expected  # the host path (sync every step) agrees
        for c in CONSTANTS:
            assert decisions(trace, c) == expected, c
            assert on_host(trace, c) == expected, c
    assert any(any(decisions(t, 1.0)) for t in traces)  # the gate did fire somewhere


def _records(loss: np.ndarray, norm: np.ndarray) -> list[StepRecord]:
    return [StepRecord(step=i, loss=float(v), global_norm=float(n),
                       layer_norms=np.array([n]), layer_names=("fc",))
            for i, (v, n) in enumerate(zip(loss, norm, strict=True))]


@pytest.mark.parametrize("on_spike", ["stop", "skip"])
def test_no_norm_verdict_at_step_zero_of_a_healthy_run_with_huge_gradients(on_spike) -> None:
    rng = np.random.default_rng(3)
    n = 200
    loss = 1e7 * np.exp(-np.arange(n) / 80) * np.exp(rng.normal(0, 0.05, n))
    norm = 3e6 * np.exp(rng.normal(0, 0.2, n))  # sum-reduced, scaled: norms ~1e6 from step 0
    assert replay(default_detector(on_spike=on_spike), _records(loss, norm)) is None


@pytest.mark.parametrize("on_spike", ["stop", "skip"])
def test_near_zero_loss_with_a_bump_is_not_flagged(on_spike: str) -> None:
    """A task learned to 1e-4 that bumps to 1e-2 for a few steps and comes back is healthy."""
    rng = np.random.default_rng(4)
    n = 300
    loss = np.maximum(1e-4, np.exp(-np.arange(n) / 20)) * np.exp(rng.normal(0, 0.1, n))
    norm = np.sqrt(loss) * np.exp(rng.normal(0, 0.1, n))
    loss[200:204] = 1e-2
    norm[200:204] *= 2.0  # the bump's gradients: a modest rise, not an explosion
    assert replay(default_detector(on_spike=on_spike), _records(loss, norm)) is None
    loss[200:] = 1.5  # while a loss that goes back above its start and stays is a divergence
    verdict = replay(default_detector(on_spike=on_spike), _records(loss, norm))
    assert verdict is not None and verdict.kind == "loss_divergence"


def test_a_spike_that_stopped_a_run_suggests_skipping_it() -> None:
    from stability.diagnose import diagnose

    result = train(FaultyTask(), {**CONFIG, "on_spike": "stop", "clip_method": "norm",
                                  "clip_threshold": 1.0}, steps=100, seed=0,
                   detector=default_detector({"loss_divergence": None}, on_spike="stop"))
    assert result.verdict is not None and result.verdict.kind in ("ceiling", "spike")
    fixes = diagnose(result.trace, result.verdict, result.config).suggestions
    assert fixes[0].changes == {"on_spike": "skip"}
