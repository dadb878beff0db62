"""The sweep driver: run (or resume) the study a spec describes, on Ray workers.

:func:`run_sweep` is the whole of ``stabsweep run``. It checks the workload (:mod:`preflight`),
opens the study (:mod:`studies`) and its MLflow run, starts or joins Ray, keeps every worker
busy (:mod:`dispatch`, which records each end through :mod:`tell`), then writes the report
(:mod:`artifacts`) and returns a :class:`~summary.SweepSummary`. How trials end and what
Optuna records for each: :mod:`sweeps.common.outcomes`.

Rerunning the same spec resumes: trials left RUNNING by a driver that died are closed as
interrupted and retried; finished trials are never run again; the study reaches ``n_trials``
finished (COMPLETE or PRUNED) trials.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import ray

from sweeps.common import OptionError, SweepError, SweepInterrupted, keys
from sweeps.driver._reaper import start_reaper
from sweeps.driver.agree import make_tracking_agree
from sweeps.driver.artifacts import finish_study_run, output_dir
from sweeps.driver.dispatch import Dispatcher, recover
from sweeps.driver.events import (
    AlreadyDone,
    EventHandler,
    StorageServed,
    SweepStarted,
    SweepWarning,
)
from sweeps.driver.options import RunOptions
from sweeps.driver.preflight import preflight
from sweeps.driver.summary import SweepSummary, summarize
from sweeps.spec import SweepSpec
from sweeps.store import StorageError, StudyStorage, check_not_busy, finished_count, open_study
from sweeps.tracking import NullTracker, StudyTracker
from sweeps.worker import SweepResourceError, WorkerPool, init_ray

__all__ = ["OptionError", "RunOptions", "SweepError", "SweepInterrupted", "SweepSummary",
           "preflight", "run_sweep"]


def run_sweep(spec: SweepSpec, options: RunOptions | None = None,
              on_event: EventHandler | None = None) -> SweepSummary:
    """Run (or resume) the study a spec describes; return its summary.

    Raises SweepError before anything is written when the workload cannot be built, and
    SweepInterrupted (after closing running trials) on Ctrl-C or SIGTERM.
    """
    options = options or RunOptions()
    spec = spec.with_overrides(n_trials=options.n_trials, seed=options.seed, study=options.study)
    try:  # a study another driver runs is refused now, not after the preflight's seconds
        check_not_busy(options.storage, workdir=options.workdir)
    except StorageError as exc:
        raise SweepError(str(exc), option="storage") from None
    preflight(spec, options)
    try:
        storage = StudyStorage(options.storage, workdir=options.workdir,
                               serve_host=options.storage_host)
    except StorageError as exc:
        raise SweepError(str(exc), option="storage") from None
    driver = _Driver(spec, options, storage, on_event or (lambda event: None))
    try:
        return driver.run()
    finally:
        driver.close()


class _Driver:
    """One run of a sweep: the resources it holds (study, tracker, Ray, workers) and their
    order of opening and closing."""

    def __init__(self, spec: SweepSpec, options: RunOptions, storage: StudyStorage,
                 emit: EventHandler) -> None:
        self.spec, self.options, self.storage, self.emit = spec, options, storage, emit
        self.tracker: StudyTracker | NullTracker = NullTracker()
        self.pool: WorkerPool | None = None
        self.ray_started = False
        self.reaper: Any = None

    def run(self) -> SweepSummary:
        start = time.perf_counter()
        study = open_study(self.spec, self.storage.backend, self.storage.display_url)
        if finished_count(study) >= self.spec.n_trials:
            recover(study, self.storage, self.spec, self.options, self.emit, self.tracker)
            self.emit(AlreadyDone(finished_count(study), self.spec.n_trials))
            return self._summary(study, start, dispatched=0)
        self.tracker = self._open_tracker(study)
        recover(study, self.storage, self.spec, self.options, self.emit, self.tracker)
        if not ray.is_initialized():  # the Ray we start dies with us, even on kill -9, and
            self.reaper = start_reaper(on_death=self.tracker.orphan_command())  # MLflow says so
        try:
            workers, self.ray_started = init_ray(
                self.options.ray_address, workers=self.options.workers,
                cpus_per_trial=self.options.cpus_per_trial,
                gpus_per_trial=self.options.gpus_per_trial)
        except SweepResourceError as exc:
            raise SweepError(str(exc), option="workers") from None
        self.pool = WorkerPool(workers, self.options.cpus_per_trial, self.options.gpus_per_trial)
        dispatcher = Dispatcher(self.spec, self.options, study, self.storage, self.pool,
                                self.tracker, self.emit)
        if dispatcher.worker_storage is not None and self.storage.proxy_address:
            self.emit(StorageServed(*self.storage.proxy_address))
        self.emit(SweepStarted(self.spec.study, workers, self.storage.display_url,
                               finished_count(study), self.spec.n_trials))
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            dispatcher.run()
        except SweepResourceError as exc:
            dispatcher.interrupt()
            raise SweepError(str(exc), option="workers") from None
        except KeyboardInterrupt:
            dispatcher.interrupt()  # the workers are stopped, their trials closed
            self.tracker.close("KILLED")  # every spool uploaded
            make_tracking_agree(study, self.tracker, self.emit,
                                shared=self.storage.shared)
            raise SweepInterrupted(
                f"interrupted: {self.spec.study!r} keeps its finished trials") from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        summary = self._summary(study, start, dispatcher.dispatched)
        if self.tracker.enabled:
            try:
                finish_study_run(study, summary, self.tracker,
                                 out=output_dir(self.options.workdir, self.spec.study),
                                 storage_url=self.storage.display_url)
            except Exception as exc:  # the study is safe in Optuna; tracking must not fail it
                self.emit(SweepWarning(f"could not finish the MLflow parent run: {exc}"))
            make_tracking_agree(study, self.tracker, self.emit,
                                shared=self.storage.shared)
        return summary

    def _open_tracker(self, study: Any) -> StudyTracker | NullTracker:
        if not self.options.tracking:
            return NullTracker()
        # MLflow announces its schema migrations at INFO on every new store; keep the CLI quiet
        # unless the user asked for a level.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        tracker = StudyTracker.open(
            self.spec.study, self.spec.to_dict(), self.options.tracking_uri,
            existing_parent_run_id=study.user_attrs.get(keys.STUDY_MLFLOW_RUN),
            workdir=self.options.workdir)
        study.set_user_attr(keys.STUDY_MLFLOW_RUN, tracker.parent_run_id)
        return tracker

    def _summary(self, study: Any, start: float, dispatched: int) -> SweepSummary:
        return summarize(study, steps=self.spec.steps, storage=self.storage.display_url,
                         started=start, mlflow_url=self.tracker.ui_url(),
                         trials_this_run=dispatched)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        if self.ray_started:
            ray.shutdown()
        if self.reaper is not None:  # stops what ray.shutdown left (its agents), then exits
            self.reaper.close()
        self.storage.close()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
