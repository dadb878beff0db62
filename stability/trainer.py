"""A small, fast loop that runs a Workload under a StabilityConfig.

The sweep calls :func:`train` once per trial; ``report`` is how it reports to Optuna and asks
to stop. Everything the trial produced comes back in a :class:`TrainResult`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from stability.config import StabilityConfig
from stability.detectors import Detector
from stability.diagnose import Diagnosis, diagnose
from stability.guard import StabilityGuard
from stability.records import StepRecord, Verdict
from stability.watcher import save_run
from stability.workloads import Workload, load_workload


@dataclass(slots=True)
class Progress:
    """What a report callback sees every ``report_every`` steps."""

    step: int
    """optimizer steps completed."""
    loss: float
    """training loss of the latest step."""
    metrics: dict[str, float]
    """latest evaluation (empty before the first one)."""
    verdict: Verdict | None
    evaluated_now: bool = False


class StopReason(StrEnum):
    """Why :func:`train` stopped before its last step."""

    EXPLOSION = "explosion"
    """a detector fired."""
    REPORT = "report"
    """the ``report`` callback returned True (e.g. Optuna's pruner asked)."""


@dataclass(slots=True)
class TrainResult:
    config: StabilityConfig
    final_eval: dict[str, float]
    evals: list[dict[str, float]]
    """every evaluation, each with its ``step``."""
    trace: pd.DataFrame
    verdict: Verdict | None
    diagnosis: Diagnosis
    steps_run: int
    stopped_by: StopReason | None
    """why training stopped early; None: it ran every step."""
    wall_time_s: float
    workload: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exploded(self) -> bool:
        return self.verdict is not None

    def save(self, out: str | Path) -> Path:
        """Write ``trace.parquet``, ``diagnosis.json`` and the two plots (grad-norm trace,
        layer heatmap) to folder ``out``; return it."""
        return save_run(out, self.trace, self.verdict, self.diagnosis)


def train(
    workload: Workload | str,
    config: StabilityConfig | Mapping[str, Any],
    *,
    steps: int,
    eval_every: int | None = None,
    report_every: int = 10,
    report: Callable[[Progress], bool | None] | None = None,
    detector: Detector | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    workload_args: Mapping[str, Any] | None = None,
    sync_every: int | None = None,
    threads: int | None = None,
    on_sync: Callable[[list[StepRecord]], None] | None = None,
) -> TrainResult:
    """Train ``workload`` for ``steps`` optimizer steps under ``config``.

    Evaluates every ``eval_every`` steps and at the end; calls ``report`` every ``report_every``
    steps (a True return stops the run, e.g. an Optuna prune); stops at once on a verdict.
    """
    if not isinstance(config, StabilityConfig):
        config = StabilityConfig.from_dict(config)
    for name, value in (("steps", steps), ("report_every", report_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be >= 1 or None; got {eval_every!r}.")
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    device = torch.device(device)
    if isinstance(workload, str):
        workload = load_workload(workload, seed=seed, device=device, **dict(workload_args or {}))
    torch.manual_seed(seed)
    model = workload.model()
    if sync_every is None:
        sync_every = 1 if device.type == "cpu" else report_every
    guard = StabilityGuard(model, config, total_steps=steps, detector=detector,
                           sync_every=sync_every, on_sync=on_sync)
    start = time.perf_counter()
    evals: list[dict[str, float]] = []
    latest: dict[str, float] = {}
    stopped_by: StopReason | None = None
    batches = iter(workload.batches())
    model.train()
    try:
        while guard.step_count < steps:
            batch = next(batches)
            if guard.step(workload.loss(model, batch)):
                stopped_by = StopReason.EXPLOSION
                break
            if guard.accumulating:  # the optimizer step is not done yet
                continue
            done = guard.step_count
            evaluated = False
            if eval_every and done % eval_every == 0 and done < steps:
                latest = _evaluate(workload, model, done)
                evals.append(latest)
                evaluated = True
            if report is not None and done % report_every == 0:
                guard.sync()
                if guard.verdict is not None:
                    stopped_by = StopReason.EXPLOSION
                    break
                record = guard.last_record
                progress = Progress(done, record.loss if record else math.nan,
                                    {k: v for k, v in latest.items() if k != "step"},
                                    guard.verdict, evaluated)
                if report(progress):
                    stopped_by = StopReason.REPORT
                    break
        guard.sync()
        if guard.verdict is not None:
            stopped_by = StopReason.EXPLOSION
        final = _evaluate(workload, model, guard.step_count)
        if not evals or evals[-1]["step"] != final["step"]:
            evals.append(final)
    finally:
        guard.close()
    trace = guard.trace()
    return TrainResult(
        config=config, final_eval={k: v for k, v in final.items() if k != "step"},
        evals=evals, trace=trace, verdict=guard.verdict,
        diagnosis=diagnose(trace, guard.verdict, config), steps_run=guard.step_count,
        stopped_by=stopped_by, wall_time_s=time.perf_counter() - start,
        workload=getattr(workload, "name", type(workload).__name__),
    )


def _evaluate(workload: Workload, model: torch.nn.Module, step: int) -> dict[str, float]:
    metrics = {key: float(value) for key, value in workload.evaluate(model).items()}
    metrics["step"] = float(step)
    return metrics
