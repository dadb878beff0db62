"""One trial, as a worker runs it: params -> StabilityConfig -> train -> outcome.

``run_trial`` is plain Python (no Ray): the Ray actor in :mod:`sweeps.worker.pool` calls it, and so
can a test or a benchmark. It never raises for a workload's error: a failure is an outcome,
with its traceback, so one bad trial never takes the sweep down.
"""

from __future__ import annotations

import math
import os
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sweeps.common import Outcome, keys

PENALTY = 1e12
"""Intermediate value reported before pruning an exploded trial (sign follows the direction),
so the sampler ranks it below every stable trial. Optuna's TPE leaves FAIL trials out of its
model, so an explosion told as FAIL would teach it nothing; a PRUNED trial counts, ranked by
its last intermediate value."""


@dataclass(slots=True)
class TrialTask:
    """What a worker needs to run one trial; plain, picklable data."""

    study_name: str
    trial_number: int
    trial_id: int
    config: dict[str, Any]
    workload: str
    workload_args: dict[str, Any]
    steps: int
    eval_every: int
    report_every: int
    seed: int
    metric: str
    direction: str
    detector: dict[str, float] = field(default_factory=dict)
    storage: Any = None
    """A storage the worker can reach (URL or picklable proxy) when an Optuna pruner is on."""
    tracking: Any = None
    """MLflow tracking settings (sweeps.tracking.TrackingSettings) or None."""
    stop_on_explosion: bool = True
    """False: record the first verdict (and its onset) but train on to the last step, as a
    loop without explosion pruning would (non-finite updates are still skipped by the guard
    where it syncs every step, i.e. on CPU)."""
    pruner: Any = None
    """The study's Optuna pruner (picklable), used by the worker's ``should_prune`` when
    ``storage`` is set; None: Optuna's default (MedianPruner), as ``load_study`` gives."""


@dataclass(slots=True)
class TrialOutcome:
    trial_number: int
    outcome: Outcome
    """complete, exploded, slow or failed (the worker's view; the driver adds lost ones)."""
    value: float | None
    reason: str
    steps_run: int = 0
    intermediate: list[tuple[int, float]] = field(default_factory=list)
    """(step, objective) reported to Optuna by the driver (when the worker did not)."""
    reported_by_worker: bool = False
    verdict: dict[str, Any] | None = None
    diagnosis: dict[str, Any] | None = None
    final_eval: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    wall_time_s: float = 0.0
    worker: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    skipped_updates: int = 0
    """updates the guard dropped (a spike or a non-finite step) and trained on past."""

    def user_attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            keys.OUTCOME: self.outcome,
            keys.REASON: self.reason,
            keys.STEPS_RUN: self.steps_run,
            keys.SKIPPED: self.skipped_updates,
            keys.WALL_TIME: round(self.wall_time_s, 3),
            keys.WORKER: self.worker,
        }
        if self.final_eval:
            attrs[keys.FINAL_EVAL] = _finite_or_str(self.final_eval)
        if self.verdict is not None:
            attrs[keys.VERDICT] = _finite_or_str(self.verdict)
        if self.diagnosis is not None:
            attrs[keys.DIAGNOSIS] = self.diagnosis
            if self.verdict is not None or self.outcome == Outcome.EXPLODED:
                attrs[keys.ONSET_STEP] = self.diagnosis.get("onset_step")
                attrs[keys.FIRST_LAYER] = self.diagnosis.get("first_layer")
        if self.error is not None:
            attrs[keys.ERROR] = self.error[-4000:]
        return attrs


def _finite_or_str(data: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy: non-finite floats become strings ('nan', 'inf')."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in data.items()}


def worker_info(device: str, threads: int, gpu_ids: list[Any] | None = None) -> dict[str, Any]:
    return {"node": socket.gethostname(), "pid": os.getpid(), "device": device,
            "torch_threads": threads, "gpu_ids": [str(g) for g in gpu_ids or []]}


def run_trial(task: TrialTask, *, device: str = "cpu", info: dict[str, Any] | None = None,
              on_progress: Callable[[int], None] | None = None) -> TrialOutcome:
    """Train one trial and say how it ended. Never raises for the workload's errors.

    ``on_progress(steps)`` is called with the optimizer steps done at each report (every
    ``report_every`` steps); a failed trial's ``steps_run`` is the last of them."""
    import time

    from stability.config import StabilityConfig
    from stability.detectors import Detector, VerdictRecorder, detector_for
    from stability.trainer import StopReason, train

    start = time.perf_counter()
    info = info or {}
    sign = 1.0 if task.direction == "minimize" else -1.0
    reporter = _OptunaReporter(task) if task.storage is not None else None
    intermediate: list[tuple[int, float]] = []
    tracker = _start_tracking(task)

    steps_done = [0]

    def report(progress: Any) -> bool:
        steps_done[0] = progress.step
        if on_progress is not None:
            on_progress(progress.step)
        if not progress.evaluated_now or task.metric not in progress.metrics:
            return False
        value = float(progress.metrics[task.metric])
        intermediate.append((progress.step, value))
        if reporter is not None:
            return reporter.report(value, progress.step)
        return False

    try:
        config = StabilityConfig.from_dict(task.config)
        detector: Detector = detector_for(config, task.detector)
        observer = None
        if not task.stop_on_explosion:
            detector = observer = VerdictRecorder(detector)
        result = train(
            task.workload, config, steps=task.steps, eval_every=task.eval_every,
            report_every=task.report_every, report=report, detector=detector, seed=task.seed,
            device=device, workload_args=task.workload_args,
            on_sync=tracker.on_sync if tracker is not None else None,
        )
    except Exception as exc:  # the workload (or its config) raised: this trial fails
        if tracker is not None:
            tracker.finish_failed(exc, steps_done[0])
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return TrialOutcome(
            task.trial_number, Outcome.FAILED, None,
            f"workload raised {type(exc).__name__}: {first_line}", steps_run=steps_done[0],
            error=traceback.format_exc(), wall_time_s=time.perf_counter() - start, worker=info,
            mlflow_run_id=tracker.run_id if tracker is not None else None)
    value = result.final_eval.get(task.metric, math.nan)
    outcome = TrialOutcome(
        task.trial_number, Outcome.COMPLETE, value, "", steps_run=result.steps_run,
        intermediate=intermediate, reported_by_worker=reporter is not None,
        diagnosis=result.diagnosis.to_dict(), final_eval=result.final_eval,
        wall_time_s=time.perf_counter() - start, worker=info,
        skipped_updates=int(getattr(result.diagnosis, "skipped_count", 0) or 0))
    if observer is not None and observer.verdict is not None and result.verdict is None:
        # ran on past a verdict: keep the trial's outcome, record the verdict and its onset
        from stability.diagnose import diagnose

        outcome.verdict = observer.verdict.to_dict()
        outcome.diagnosis = diagnose(result.trace, observer.verdict, result.config).to_dict()
    if result.verdict is not None:
        outcome.outcome, outcome.value = Outcome.EXPLODED, sign * PENALTY
        outcome.verdict = result.verdict.to_dict()
        outcome.reason = f"exploded: {result.verdict}"
    elif result.stopped_by is StopReason.REPORT:
        outcome.outcome = Outcome.SLOW
        outcome.value = intermediate[-1][1] if intermediate else None
        outcome.reason = (f"pruned by the {task.metric} pruner at step {result.steps_run} "
                          "(stable but slow)")
    elif task.metric not in result.final_eval:
        outcome.outcome, outcome.value = Outcome.FAILED, None
        outcome.reason = (f"objective metric {task.metric!r} not in the workload's evaluation "
                          f"(it returns {sorted(result.final_eval)}); fix objective.metric")
    elif not math.isfinite(value):
        # Diverged without tripping a detector (e.g. NaN eval): still an explosion.
        outcome.outcome, outcome.value = Outcome.EXPLODED, sign * PENALTY
        outcome.reason = f"exploded: final {task.metric} is {value}"
    elif outcome.skipped_updates > 0:
        # ran every step, but only because the guard dropped updates on the way (whether it
        # also learned is the diagnosis's to say: never_learned or rescued)
        outcome.outcome = Outcome.RESCUED
        outcome.reason = (f"rescued: completed {result.steps_run} steps after "
                          f"{outcome.skipped_updates} skipped update(s), the first at step "
                          f"{result.diagnosis.first_skipped_step}")
    else:
        outcome.reason = f"completed {result.steps_run} steps"
    if tracker is not None:
        outcome.mlflow_run_id = tracker.finish(result, outcome)
    return outcome


class _OptunaReporter:
    """Reports intermediate values to the study from the worker and asks the pruner."""

    def __init__(self, task: TrialTask) -> None:
        import optuna

        storage = task.storage
        if isinstance(storage, str):
            storage = optuna.storages.get_storage(storage)
        # The spec's pruner: load_study alone would give every worker a MedianPruner.
        self.study = optuna.load_study(study_name=task.study_name, storage=storage,
                                       pruner=task.pruner)
        self.trial = optuna.trial.Trial(self.study, task.trial_id)

    def report(self, value: float, step: int) -> bool:
        self.trial.report(value, step)
        return bool(self.trial.should_prune())


def _start_tracking(task: TrialTask) -> Any:
    if task.tracking is None or not getattr(task.tracking, "enabled", True):
        return None
    from sweeps.tracking import TrialTracker

    return TrialTracker.start(task)
