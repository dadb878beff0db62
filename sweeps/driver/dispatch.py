"""Dispatching trials: ask Optuna for the next params, hand them to a free Ray worker, and
collect each result as it comes back, until the study has ``n_trials`` finished trials.

A worker is asked every :data:`PROGRESS_EVERY_S` how many steps its trial has done (without
blocking it), so a trial that is interrupted or whose worker is lost is recorded with the
steps it ran, not 0 or all of them.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import optuna
import ray

from sweeps.common import Outcome, SweepError, keys
from sweeps.driver.events import EventHandler, TrialDispatched, TrialEnded, TrialRecovered
from sweeps.driver.options import RunOptions
from sweeps.driver.tell import tell_lost, tell_outcome
from sweeps.spec import SweepSpec, suggest
from sweeps.store import HEARTBEAT_S, finished_count, recover_stale, retry
from sweeps.worker import TrialOutcome, TrialTask, WorkerPool

__all__ = ["PERSIST_EVERY_S", "PROGRESS_EVERY_S", "Dispatcher", "Running", "recover"]

PROGRESS_EVERY_S = 1.0
"""How often the driver asks each running trial's worker how many steps it has done."""
PERSIST_EVERY_S = 5.0
"""How often a running trial's steps go to the study, where a restarted driver finds them."""


@dataclass
class Running:
    trial: Any
    task: TrialTask | None
    slot: int
    attempt: int
    run_id: str | None
    started: float
    steps: int = 0
    """optimizer steps the worker last said it had done (see Dispatcher.poll_progress)."""
    progress_ref: Any = None
    asked: float = 0.0
    saved: float = 0.0


def recover(study: optuna.Study, storage: Any, spec: SweepSpec, options: RunOptions,
            emit: EventHandler, tracker: Any,
            reason: str = "the sweep stopped before this trial finished") -> None:
    """Close the trials a stopped driver left running and retry their params: every RUNNING
    trial of a SQLite study (we hold its lock), only those whose heartbeat is stale on a
    database server (see :func:`sweeps.store.studies.recover_stale`)."""
    stale = storage.stale_trial_ids(study._study_id) if storage.shared else None

    def closed(frozen: optuna.trial.FrozenTrial) -> None:
        run_id = frozen.user_attrs.get(keys.MLFLOW_RUN)
        if run_id:  # its MLflow run ends KILLED too, with the steps the study keeps
            steps = study._storage.get_trial(frozen._trial_id).user_attrs.get(keys.STEPS_RUN)
            tracker.close_trial_run(str(run_id), Outcome.INTERRUPTED, reason, steps)
        emit(TrialRecovered(frozen.number))

    recover_stale(study, steps=spec.steps, max_retries=options.max_retries, reason=reason,
                  stale_ids=stale, on_recovered=closed)


class Dispatcher:
    """Keeps every worker of ``pool`` busy with a trial of ``study`` until it is done."""

    def __init__(self, spec: SweepSpec, options: RunOptions, study: optuna.Study,
                 storage: Any, pool: WorkerPool, tracker: Any, emit: EventHandler) -> None:
        self.spec, self.options, self.study, self.storage = spec, options, study, storage
        self.pool, self.tracker, self.emit = pool, tracker, emit
        self.shared = bool(storage.shared)
        """A database server: other drivers may run this study (heartbeats, no lock)."""
        self.worker_storage = storage.worker_storage() if spec.pruner.name != "none" else None
        """Where workers report to Optuna's pruner (None: no pruner, the driver reports)."""
        self.running: dict[Any, Running] = {}
        self.consecutive_failures = 0
        self.dispatched = 0

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        target = self.spec.n_trials
        finished = finished_count(self.study)
        beat = time.perf_counter()
        while finished < target or self.running:
            if self.shared and time.perf_counter() - beat >= HEARTBEAT_S:
                beat = time.perf_counter()  # our trials live; another dead driver's are retried
                self.storage.heartbeat([r.trial._trial_id for r in self.running.values()])
                self.recover_stale("its driver stopped (no heartbeat); retried")
            busy = {r.slot for r in self.running.values()}
            for slot in self.pool.idle_ready(busy):
                if finished + len(self.running) >= target:
                    break
                self.dispatch(slot)
            if not self.running:
                time.sleep(0.05)  # workers still starting
                continue
            done, _ = ray.wait(list(self.running), num_returns=1, timeout=0.5)
            for ref in done:
                finished += self.collect(ref)  # counted here: no query of every trial
            self.poll_progress()
            if self.consecutive_failures >= self.options.max_consecutive_failures:
                raise SweepError(
                    f"{self.consecutive_failures} trials in a row failed (the workload raised); "
                    f"see `stabsweep status {self.spec.study}` for the tracebacks.")

    def dispatch(self, slot: int) -> None:
        trial = self.study.ask()
        if self.shared:
            self.storage.heartbeat([trial._trial_id])  # ours, alive
        attempt = int(trial.user_attrs.get(keys.ATTEMPT, 1))
        config, workload_args = suggest(trial, self.spec)
        trial.set_user_attr(keys.CONFIG, config.to_dict())
        trial.set_user_attr(keys.WORKLOAD_ARGS, workload_args)
        if attempt == 1:
            trial.set_user_attr(keys.ATTEMPT, 1)
        run_id = self.tracker.create_trial_run(trial.number, trial.params, attempt)
        if run_id is not None:  # a driver that resumes after us closes it if we die
            trial.set_user_attr(keys.MLFLOW_RUN, run_id)
        spec = self.spec
        task = TrialTask(
            study_name=spec.study, trial_number=trial.number, trial_id=trial._trial_id,
            config=config.to_dict(), workload=spec.workload.name,
            workload_args=workload_args, steps=spec.steps, eval_every=spec.eval_every,
            report_every=spec.report_every, seed=spec.seed, metric=spec.objective.metric,
            direction=spec.objective.direction, detector=dict(spec.detector),
            storage=self.worker_storage, tracking=self.tracker.settings_for(run_id),
            stop_on_explosion=spec.stop_on_explosion,
            pruner=self.study.pruner if self.worker_storage is not None else None)
        ref = self.pool.submit(slot, task)
        self.running[ref] = Running(trial, task, slot, attempt, run_id, time.perf_counter())
        self.dispatched += 1
        self.emit(TrialDispatched(trial.number, dict(trial.params), attempt))

    def poll_progress(self, wait_s: float = 0.0) -> None:
        """Ask each running trial's worker, at most every PROGRESS_EVERY_S, how many steps it
        has done, without blocking; store the count every PERSIST_EVERY_S."""
        now = time.perf_counter()
        pending = [r.progress_ref for r in self.running.values() if r.progress_ref is not None]
        answered: set[Any] = set()
        if pending:
            answered = set(ray.wait(pending, num_returns=len(pending), timeout=wait_s)[0])
        for item in self.running.values():
            if item.progress_ref is not None and item.progress_ref in answered:
                try:
                    answer = ray.get(item.progress_ref)
                except ray.exceptions.RayError:
                    answer = None  # the worker is gone; collect() will say so
                item.progress_ref = None
                if answer and answer[0] == item.trial.number and answer[1] > item.steps:
                    item.steps = int(answer[1])
                    if now - item.saved >= PERSIST_EVERY_S:
                        item.trial.set_user_attr(keys.STEPS_RUN, item.steps)
                        item.saved = now
            if item.progress_ref is None and now - item.asked >= PROGRESS_EVERY_S:
                item.progress_ref = self.pool.ask_progress(item.slot)
                item.asked = now

    def collect(self, ref: Any) -> int:
        """Tell Optuna how a trial ended; 1 if it is now finished (COMPLETE or PRUNED)."""
        item = self.running.pop(ref)
        try:
            result: TrialOutcome = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self.pool.replace(item.slot)
            self.close_lost(item, Outcome.WORKER_LOST,
                            f"worker lost ({type(exc).__name__}): process or node died")
            return 0
        except ray.exceptions.RayError as exc:
            result = TrialOutcome(item.trial.number, Outcome.FAILED, None,
                                  f"worker error {type(exc).__name__}", error=str(exc))
        outcome = tell_outcome(self.study, item.trial, result)
        self.consecutive_failures = self.consecutive_failures + 1 if outcome.failed else 0
        self.emit(TrialEnded(item.trial.number, outcome, result.value, result.reason,
                             result.steps_run, dict(item.trial.params), result.wall_time_s,
                             self.best_value(), result.skipped_updates))
        return int(outcome.finished)

    # ------------------------------------------------------------------ trials that did not end
    def close_lost(self, item: Running, outcome: Outcome, reason: str) -> None:
        """A trial whose worker is gone: FAIL it with the reason, retry its params."""
        trial = item.trial
        wall = time.perf_counter() - item.started
        tell_lost(self.study, trial, outcome, reason, steps_run=item.steps, wall_time_s=wall)
        self.tracker.close_trial_run(item.run_id, outcome, reason, item.steps)
        retried = retry(self.study, trial.number, trial.params, item.attempt,
                        self.options.max_retries)
        # an interrupted trial's reason already says it is retried on resume
        suffix = ("" if outcome is Outcome.INTERRUPTED else "; retrying") if retried \
            else "; retries used up"
        self.emit(TrialEnded(trial.number, outcome, None, reason + suffix, item.steps,
                             dict(trial.params), wall, self.best_value()))

    def recover_stale(self, reason: str) -> None:
        recover(self.study, self.storage, self.spec, self.options, self.emit, self.tracker,
                reason)

    def interrupt(self) -> None:
        """Ctrl-C may land anywhere, even between ask() and dispatch: close what we know, then
        anything else still RUNNING in the study. First a last word from the workers on the
        steps their trials ran (those that still answer, within a second)."""
        with contextlib.suppress(Exception):  # best effort: the steps stay as last polled
            for item in self.running.values():
                item.asked = 0.0
            self.poll_progress()
            self.poll_progress(wait_s=1.0)
        with contextlib.suppress(Exception):  # trials that ended meanwhile are told as they ended
            done, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
            for ref in done:
                self.collect(ref)
        # Stop the workers before the trials are closed: one left training would log a run
        # that ends "complete" after the study recorded it interrupted.
        self.pool.shutdown()
        reason = "interrupted (Ctrl-C); retried on resume"
        for item in list(self.running.values()):
            self.close_lost(item, Outcome.INTERRUPTED, reason)
        self.running.clear()
        if not self.shared:  # a server's other RUNNING trials may be another driver's
            self.recover_stale(reason)

    def best_value(self) -> float | None:
        try:
            return float(self.study.best_value)
        except ValueError:
            return None
