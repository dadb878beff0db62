"""train() on real built-in workloads at small sizes: detection, cadence, callbacks, AMP."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from stability.detectors import NullDetector, default_detector, records_from_trace, replay
from stability.trainer import Progress, StopReason, train
from stability.workloads import load_workload

# Plain SGD on a deep tanh MLP: lr 0.5 blows up within ~40 steps; clipping at 1.0 tames it.
MLP = {"depth": 8, "width": 32, "batch_size": 64, "activation": "tanh"}
EXPLOSIVE = {"optimizer": "sgd", "momentum": 0.0, "lr": 0.5}
SMALL_MLP = {"depth": 4, "width": 16, "batch_size": 32}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and fast on small tensors
    yield
    torch.set_num_threads(threads)


def _first_nonfinite(loss: np.ndarray) -> int:
    bad = ~np.isfinite(loss)
    assert bad.any(), "the run never turned non-finite"
    return int(np.argmax(bad))


def test_explosion_is_flagged_before_the_loss_turns_nonfinite() -> None:
    free = train("deep_mlp", EXPLOSIVE, steps=200, detector=NullDetector(), workload_args=MLP)
    assert free.verdict is None and free.stopped_by is None and free.steps_run == 200
    loss = free.trace["loss"].to_numpy()
    nan_step = _first_nonfinite(loss)
    assert 20 <= nan_step <= 80  # a real run-up, not a first-step blow-up
    norm = free.trace["grad_norm"].to_numpy()
    assert norm[nan_step - 1] > 1e6 * np.median(norm[:10])  # the gradient saw it coming

    guarded = train("deep_mlp", EXPLOSIVE, steps=200, workload_args=MLP)
    verdict = guarded.verdict
    assert verdict is not None and guarded.stopped_by is StopReason.EXPLOSION
    assert verdict.step <= nan_step - 5  # flagged at least 5 steps before NaN/inf
    # the guard stops at the verdict; the run is the same as the free one up to there
    assert guarded.steps_run == verdict.step + 1 == len(guarded.trace)
    np.testing.assert_allclose(guarded.trace["loss"], loss[:verdict.step + 1], rtol=1e-6)
    assert guarded.diagnosis.exploded and guarded.diagnosis.verdict_step == verdict.step
    # replaying the free run's trace gives the same verdict as the live guard
    assert replay(default_detector(), free.trace) == verdict
    # the gradient-side detectors alone also flag it before NaN (not only the loss rule)
    norms_only = replay(default_detector({"loss_divergence": None}), free.trace)
    assert norms_only is not None and norms_only.step < nan_step


def test_the_same_run_with_norm_clipping_trains_and_is_not_flagged() -> None:
    config = {**EXPLOSIVE, "clip_method": "norm", "clip_threshold": 1.0}
    result = train("deep_mlp", config, steps=200, eval_every=50, workload_args=MLP)
    assert result.verdict is None and result.stopped_by is None and result.steps_run == 200
    assert not result.diagnosis.exploded
    trace = result.trace
    assert np.isfinite(trace["loss"]).all()
    assert (trace["clip_coef"] < 1.0).mean() > 0.3  # clipping was doing the work
    assert (trace["clip_threshold"] == 1.0).all()
    workload = load_workload("deep_mlp", **MLP)
    initial = workload.evaluate(workload.model())["eval_loss"]
    assert result.final_eval["eval_loss"] < 0.5 * initial  # it learned (from ~1.0)


def test_evals_at_the_cadence_and_one_trace_row_per_step() -> None:
    result = train("deep_mlp", {"optimizer": "adam", "lr": 1e-3}, steps=60, eval_every=20,
                   workload_args=SMALL_MLP)
    assert [e["step"] for e in result.evals] == [20.0, 40.0, 60.0]
    assert all(math.isfinite(e["eval_loss"]) for e in result.evals)
    assert result.final_eval == {k: v for k, v in result.evals[-1].items() if k != "step"}
    assert result.steps_run == 60 and result.stopped_by is None and not result.exploded
    trace = result.trace
    assert list(trace["step"]) == list(range(60))
    assert {"loss", "grad_norm", "lr", "clip_coef", "overflow", "nonfinite"} <= set(trace)
    assert sum(c.startswith("grad_norm/") for c in trace.columns) == 4  # one per Linear
    assert len(records_from_trace(trace)) == 60
    assert result.workload == "deep_mlp" and result.wall_time_s > 0


def test_report_is_called_every_report_every_steps_and_true_stops_the_run() -> None:
    seen: list[Progress] = []

    def report(progress: Progress) -> bool:
        seen.append(progress)
        return progress.step >= 30

    result = train("deep_mlp", {"optimizer": "adam", "lr": 1e-3}, steps=100, eval_every=20,
                   report_every=10, report=report, workload_args=SMALL_MLP)
    assert [p.step for p in seen] == [10, 20, 30]
    assert [p.evaluated_now for p in seen] == [False, True, False]
    assert seen[0].metrics == {} and set(seen[1].metrics) == {"eval_loss"}
    trace_loss = result.trace["loss"].to_numpy()
    assert [p.loss for p in seen] == pytest.approx([trace_loss[s - 1] for s in (10, 20, 30)])
    assert all(p.verdict is None for p in seen)
    assert result.stopped_by is StopReason.REPORT and result.steps_run == 30
    assert len(result.trace) == 30
    assert [e["step"] for e in result.evals] == [20.0, 30.0]  # the cadence, then the final


class _Counting:
    """A built-in workload that counts the training batches drawn from it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.drawn = 0

    def model(self) -> nn.Module:
        return self.inner.model()

    def batches(self) -> Iterator[Any]:
        for batch in self.inner.batches():
            self.drawn += 1
            yield batch

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.inner.loss(model, batch)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.inner.evaluate(model)


def test_grad_accumulation_runs_n_times_accum_micro_batches() -> None:
    inner = load_workload("deep_mlp", seed=3, **SMALL_MLP)
    workload = _Counting(inner)
    config = {"optimizer": "sgd", "lr": 0.01, "grad_accum_steps": 3}
    result = train(workload, config, steps=10, seed=3)
    assert workload.drawn == 30 and result.steps_run == 10 and len(result.trace) == 10
    # step 0: the loss is the mean over its three micro-batches and the gradient is the
    # gradient of that mean, all at the initial weights
    model = inner.model()
    stream = inner.batches()
    losses = [inner.loss(model, next(stream)) for _ in range(3)]
    mean = torch.stack(losses).mean()
    mean.backward()
    norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    assert result.trace["loss"].iloc[0] == pytest.approx(mean.item(), rel=1e-6)
    assert result.trace["grad_norm"].iloc[0] == pytest.approx(norm.item(), rel=1e-5)


def test_fp16_on_cpu_counts_overflowed_steps_and_trains() -> None:
    # a loss scale of 2**24 overflows fp16 gradients: the scaler halves it and skips the step
    config = {"optimizer": "adam", "lr": 1e-3, "precision": "fp16", "loss_scale_init": 2.0**24}
    result = train("deep_mlp", config, steps=60, workload_args=SMALL_MLP)
    trace = result.trace
    overflow = trace["overflow"].to_numpy()
    n = int(overflow.sum())
    assert 3 <= n < 12 and overflow[:3].all()  # at least the first three steps overflow
    scale = trace["amp_scale"].to_numpy()
    assert scale[0] == 2.0**24
    # an overflowed step halves the scale (backoff 0.5); a clean one keeps it (growth every
    # 2000 steps)
    np.testing.assert_array_equal(scale[1:], scale[:-1] * np.where(overflow[:-1], 0.5, 1.0))
    assert result.verdict is None and result.steps_run == 60
    assert result.diagnosis.overflow_count == n
    assert np.isfinite(trace["loss"]).all()
    assert trace["loss"].iloc[-10:].mean() < trace["loss"].iloc[:10].mean()
