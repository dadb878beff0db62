"""The sweep driver: ask Optuna, dispatch to Ray workers, tell Optuna how each trial ended.

The driver is the only process that creates or ends trials (ask / tell), so the study's state is
always what the driver last wrote. Trials end as:

* COMPLETE: ran every step, stable.
* PRUNED (``exploded``): a detector fired; the verdict, onset step and first layer are user
  attributes, and a penalty intermediate value ranks the trial below every stable one so TPE
  learns to avoid the region (explosions reported as FAIL are ignored by TPE).
* PRUNED (``slow``): Optuna's own pruner stopped a stable trial.
* FAIL: the workload raised (traceback recorded, not retried); the worker or its node was lost,
  or the sweep was interrupted (retried with the same params up to ``max_retries``).

Rerunning the same spec resumes: trials left RUNNING by a driver that died are closed as FAIL
and retried; finished trials are never run again; the study reaches ``n_trials`` finished
(COMPLETE or PRUNED) trials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps import keys
from sweeps.objective import PENALTY, TrialOutcome, TrialTask
from sweeps.spec import SweepSpec

FINISHED_STATES = ("COMPLETE", "PRUNED")


class SweepError(RuntimeError):
    """The sweep cannot start (bad workload, storage in use, changed search space...)."""


class SweepInterrupted(RuntimeError):
    """Ctrl-C: running trials were closed as FAIL (interrupted) and will be retried on resume."""


@dataclass
class RunOptions:
    n_trials: int | None = None
    workers: int | None = None
    ray_address: str | None = None
    storage: str | None = None
    study: str | None = None
    tracking_uri: str | None = None
    tracking: bool = True
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    seed: int | None = None
    max_retries: int = 2
    max_consecutive_failures: int = 5
    storage_host: str = "127.0.0.1"
    workdir: Path = field(default_factory=Path.cwd)


@dataclass
class SweepSummary:
    study: str
    storage: str
    n_trials: int
    counts: dict[str, int]
    best: dict[str, Any] | None
    steps_run: int
    steps_budget: int
    wall_time_s: float
    mlflow_url: str | None = None
    trials_this_run: int = 0

    @property
    def steps_saved(self) -> float:
        return 1.0 - self.steps_run / self.steps_budget if self.steps_budget else 0.0


@dataclass
class Running:
    trial: Any
    task: TrialTask
    slot: int
    attempt: int
    run_id: str | None
    started: float
    steps: int = 0
    """optimizer steps the worker last said it had done (see _poll_progress)."""
    progress_ref: Any = None
    asked: float = 0.0
    saved: float = 0.0


PROGRESS_EVERY_S = 1.0
"""How often the driver asks each running trial's worker how many steps it has done."""
PERSIST_EVERY_S = 5.0
"""How often a running trial's steps go to the study, where a restarted driver finds them."""


EventHandler = Callable[[str, dict[str, Any]], None]


def run_sweep(spec: SweepSpec, options: RunOptions | None = None,
              on_event: EventHandler | None = None) -> SweepSummary:
    """Run (or resume) the study a spec describes; return its summary.

    Raises SweepError before anything is written when the workload cannot be built, and
    SweepInterrupted (after closing running trials) on Ctrl-C.
    """
    options = options or RunOptions()
    spec = spec.with_overrides(n_trials=options.n_trials, seed=options.seed, study=options.study)
    emit = on_event or (lambda kind, data: None)
    from sweeps.storage import StorageError, StudyStorage, check_not_busy

    try:  # a study another driver runs is refused now, not after the preflight's seconds
        check_not_busy(options.storage, workdir=options.workdir)
    except StorageError as exc:
        raise SweepError(str(exc)) from None
    preflight(spec, options)

    try:
        storage = StudyStorage(options.storage, workdir=options.workdir,
                               serve_host=options.storage_host)
    except StorageError as exc:
        raise SweepError(str(exc)) from None
    driver = _Driver(spec, options, storage, emit)
    try:
        return driver.run()
    finally:
        driver.close()


def preflight(spec: SweepSpec, options: RunOptions | None = None) -> None:
    """Build the workload, its model and one evaluation in the driver, build it again with
    every other value the space gives a workload argument, and check the tracking store
    answers: a bad workload, a searched argument value its factory refuses (SpecError naming
    the field), an objective metric the workload does not report, or an unreachable MLflow
    server fails here, before any storage or run is created."""
    from stability.workloads import WorkloadError, load_workload

    base, variants = workload_arg_values(spec)
    try:
        workload = load_workload(spec.workload.name, seed=spec.seed, **base)
        metrics = workload.evaluate(workload.model())
    except WorkloadError as exc:
        _blame_first_value(spec, base, variants, exc)
        raise SweepError(f"workload.name: {exc}") from None
    except Exception as exc:
        raise SweepError(f"workload.name: workload {spec.workload.name!r} raised "
                         f"{type(exc).__name__} while building its model: {exc}") from None
    if spec.objective.metric not in metrics:
        raise SweepError(
            f"objective.metric: {spec.objective.metric!r} is not a metric workload "
            f"{spec.workload.name!r} reports; it reports {', '.join(sorted(metrics))}.")
    _check_searched_args(spec, base, variants)
    if options is not None and options.tracking:
        _check_tracking(options.tracking_uri, options.workdir)


def workload_arg_values(spec: SweepSpec) -> tuple[dict[str, Any], list[tuple[str, str, Any]]]:
    """The workload arguments of a first trial (fixed ones, each searched one at its first
    choice or low end) and every other value a trial can give a searched argument, as
    ``(field path, argument, value)``: each categorical choice, each range's high end."""
    from sweeps.space import CategoricalParam

    base = dict(spec.workload.args)
    variants: list[tuple[str, str, Any]] = []
    for name, param in spec.space.items():
        if not name.startswith("workload."):
            continue
        arg = name[len("workload."):]
        if isinstance(param, CategoricalParam):
            values = [(f"space.{name}.choices", c) for c in param.choices]
        else:
            values = [(f"space.{name}.low", param.low), (f"space.{name}.high", param.high)]
        base[arg] = values[0][1]
        variants += [(path, arg, value) for path, value in values[1:]]
    return base, variants


def _blame_first_value(spec: SweepSpec, base: dict[str, Any],
                       variants: list[tuple[str, str, Any]], exc: Exception) -> None:
    """The first trial's workload failed to build: if another value of one searched argument
    builds, that argument's first value is the culprit; refuse it by its field path."""
    from stability.workloads import load_workload
    from sweeps.space import CategoricalParam
    from sweeps.spec import SpecError

    for path, arg, value in variants:
        try:
            load_workload(spec.workload.name, seed=spec.seed, **{**base, arg: value})
        except Exception:
            continue
        first = spec.space[f"workload.{arg}"]
        where = path if isinstance(first, CategoricalParam) else path.replace(".high", ".low")
        detail = str(exc).splitlines()[0].rstrip(".")
        raise SpecError(where, f"workload {spec.workload.name!r} rejects {arg}={base[arg]!r} "
                        f"({detail}); remove that value or fix the range",
                        source=spec.source) from None


def _check_searched_args(spec: SweepSpec, base: dict[str, Any],
                         variants: list[tuple[str, str, Any]]) -> None:
    """Build the workload once per searched value (the factory checks its arguments), so a
    value no trial could run is refused before the study, the MLflow store or any file is
    created; the first trial's values were built by :func:`preflight` already."""
    from stability.workloads import WorkloadError, load_workload
    from sweeps.spec import SpecError

    for path, arg, value in variants:
        try:
            load_workload(spec.workload.name, seed=spec.seed, **{**base, arg: value})
        except Exception as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, WorkloadError):
                detail = f"{type(exc).__name__}: {detail}"
            raise SpecError(path, f"workload {spec.workload.name!r} rejects {arg}={value!r} "
                            f"({detail.rstrip('.')}); remove that value or fix the range",
                            source=spec.source) from None


def _check_tracking(flag: str | None, workdir: Path) -> None:
    """An http(s) tracking server must answer /health before the sweep starts (a server lost
    later is spooled instead)."""
    import urllib.error
    import urllib.request

    from mlflow_setup.uri import redact, resolve_tracking_uri

    uri = resolve_tracking_uri(flag, workdir)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5):
            pass
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SweepError(
            f"--tracking-uri {redact(uri)}: the MLflow server does not answer ({reason}); "
            "start it (python -m mlflow_setup start), fix the URI, or pass --no-tracking."
        ) from None


class _Driver:
    def __init__(self, spec: SweepSpec, options: RunOptions, storage: Any,
                 emit: EventHandler) -> None:
        self.spec, self.options, self.storage, self.emit = spec, options, storage, emit
        self.shared = bool(getattr(storage, "shared", False))
        """A database server: other drivers may run this study (heartbeats, no lock)."""
        self.pool: Any = None
        self.ray_started = False
        self.reaper: Any = None
        self.tracker: Any = None
        self.running: dict[Any, Running] = {}
        self.consecutive_failures = 0
        self.trials_this_run = 0

    # ------------------------------------------------------------------ setup
    def _open_study(self) -> Any:
        import optuna

        from sweeps.samplers import make_pruner, make_sampler

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        spec = self.spec
        study = optuna.create_study(
            study_name=spec.study, storage=self.storage.backend,
            direction=spec.objective.direction, sampler=make_sampler(spec),
            pruner=make_pruner(spec), load_if_exists=True)
        signature = study.user_attrs.get(keys.STUDY_SIGNATURE)
        if signature is None:
            from importlib.metadata import version

            study.set_user_attr(keys.STUDY_SPEC, spec.to_dict())
            study.set_user_attr(keys.STUDY_SIGNATURE, spec.space_signature())
            study.set_user_attr(keys.STUDY_VERSION, version("stabsweep"))
        elif signature != spec.space_signature():
            raise SweepError(
                f"study {spec.study!r} in {self.storage.display_url} was created with a different "
                "search space, workload, steps or objective; resume it with its original spec, "
                "or start a new study with --study NEW_NAME.")
        if study.direction.name.lower() != spec.objective.direction:
            raise SweepError(f"study {spec.study!r} exists with direction "
                             f"{study.direction.name.lower()}; use --study NEW_NAME.")
        return study

    def run(self) -> SweepSummary:
        start = time.perf_counter()
        self.study = study = self._open_study()
        self._recover_stale(study)
        if self._finished_count() >= self.spec.n_trials:
            self.emit("already_done", {"n_trials": self.spec.n_trials,
                                       "finished": self._finished_count()})
            return self._summary(start)
        self._open_tracking(study)
        import ray

        from sweeps.workers import SweepResourceError, WorkerPool, init_ray

        if not ray.is_initialized():  # the Ray we start dies with us, even on kill -9
            from sweeps._reaper import start_reaper

            self.reaper = start_reaper()
        try:
            workers, self.ray_started = init_ray(
                self.options.ray_address, workers=self.options.workers,
                cpus_per_trial=self.options.cpus_per_trial,
                gpus_per_trial=self.options.gpus_per_trial)
        except SweepResourceError as exc:
            raise SweepError(str(exc)) from None
        self.needs_storage = self.spec.pruner.name != "none"
        self.worker_storage = self.storage.worker_storage() if self.needs_storage else None
        if self.worker_storage is not None and self.storage.proxy_address:
            host, port = self.storage.proxy_address
            self.emit("proxy", {"host": host, "port": port})
        self.pool = WorkerPool(workers, self.options.cpus_per_trial, self.options.gpus_per_trial)
        self.emit("start", {"study": self.spec.study, "workers": workers,
                            "storage": self.storage.display_url,
                            "finished": self._finished_count(),
                            "n_trials": self.spec.n_trials})
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            self._loop()
        except SweepResourceError as exc:
            self._interrupt()
            raise SweepError(str(exc)) from None
        except KeyboardInterrupt:
            self._interrupt()
            if self.tracker is not None:
                self.tracker.close("KILLED")
            raise SweepInterrupted(
                f"interrupted: {self.spec.study!r} keeps its finished trials") from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        summary = self._summary(start)
        self._finish_tracking(summary)
        return summary

    # ------------------------------------------------------------------ main loop
    def _finished_count(self) -> int:
        from optuna.trial import TrialState

        return len(self.study.get_trials(deepcopy=False,
                                         states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def _loop(self) -> None:
        import ray

        target = self.spec.n_trials
        finished = self._finished_count()
        beat = time.perf_counter()
        while finished < target or self.running:
            if self.shared and time.perf_counter() - beat >= self._heartbeat_s():
                beat = time.perf_counter()  # our trials live; another dead driver's are retried
                self.storage.heartbeat([r.trial._trial_id for r in self.running.values()])
                self._recover_stale(self.study, "its driver stopped (no heartbeat); retried")
            busy = {r.slot for r in self.running.values()}
            for slot in self.pool.idle_ready(busy):
                if finished + len(self.running) >= target:
                    break
                self._dispatch(slot)
            if not self.running:
                time.sleep(0.05)  # workers still starting
                continue
            done, _ = ray.wait(list(self.running), num_returns=1, timeout=0.5)
            for ref in done:
                finished += self._collect(ref)  # counted here: no query of every trial
            self._poll_progress()
            if self.consecutive_failures >= self.options.max_consecutive_failures:
                raise SweepError(
                    f"{self.consecutive_failures} trials in a row failed (the workload raised); "
                    f"see `stabsweep status {self.spec.study}` for the tracebacks.")

    def _dispatch(self, slot: int) -> None:
        from sweeps.space import suggest

        trial = self.study.ask()
        if self.shared:
            self.storage.heartbeat([trial._trial_id])  # ours, alive
        attempt = int(trial.user_attrs.get(keys.ATTEMPT, 1))
        config, workload_args = suggest(trial, self.spec)
        trial.set_user_attr(keys.CONFIG, config.to_dict())
        trial.set_user_attr(keys.WORKLOAD_ARGS, workload_args)
        if attempt == 1:
            trial.set_user_attr(keys.ATTEMPT, 1)
        run_id = None
        tracking = None
        if self.tracker is not None:
            run_id = self.tracker.create_trial_run(trial.number, trial.params, attempt)
            tracking = self.tracker.settings_for(run_id)
        spec = self.spec
        task = TrialTask(
            study_name=spec.study, trial_number=trial.number, trial_id=trial._trial_id,
            config=config.to_dict(), workload=spec.workload.name,
            workload_args=workload_args, steps=spec.steps, eval_every=spec.eval_every,
            report_every=spec.report_every, seed=spec.seed, metric=spec.objective.metric,
            direction=spec.objective.direction, detector=dict(spec.detector),
            storage=self.worker_storage, tracking=tracking,
            stop_on_explosion=spec.stop_on_explosion,
            pruner=self.study.pruner if self.worker_storage is not None else None)
        ref = self.pool.submit(slot, task)
        self.running[ref] = Running(trial, task, slot, attempt, run_id, time.perf_counter())
        self.trials_this_run += 1
        self.emit("dispatch", {"trial": trial.number, "params": trial.params,
                               "attempt": attempt})

    def _poll_progress(self, wait_s: float = 0.0) -> None:
        """Ask each running trial's worker, at most every PROGRESS_EVERY_S, how many steps it
        has done, without blocking; store the count every PERSIST_EVERY_S. An interrupted trial
        or one whose worker is lost is then recorded with the steps it ran, not 0 or all."""
        import ray

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
                    answer = None  # the worker is gone; _collect will say so
                item.progress_ref = None
                if answer and answer[0] == item.trial.number and answer[1] > item.steps:
                    item.steps = int(answer[1])
                    if now - item.saved >= PERSIST_EVERY_S:
                        item.trial.set_user_attr(keys.STEPS_RUN, item.steps)
                        item.saved = now
            if item.progress_ref is None and now - item.asked >= PROGRESS_EVERY_S:
                item.progress_ref = self.pool.ask_progress(item.slot)
                item.asked = now

    def _collect(self, ref: Any) -> int:
        """Tell Optuna how a trial ended; 1 if it is now finished (COMPLETE or PRUNED)."""
        import ray

        item = self.running.pop(ref)
        try:
            outcome: TrialOutcome = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self.pool.replace(item.slot)
            self._close_lost(item, keys.WORKER_LOST,
                             f"worker lost ({type(exc).__name__}): process or node died")
            return 0
        except ray.exceptions.RayError as exc:
            outcome = TrialOutcome(item.trial.number, keys.FAILED, None,
                                   f"worker error {type(exc).__name__}", error=str(exc))
        self._tell(item, outcome)
        return int(outcome.outcome in (keys.COMPLETE, keys.EXPLODED, keys.SLOW))

    # ------------------------------------------------------------------ telling Optuna
    def _tell(self, item: Running, outcome: TrialOutcome) -> None:
        from optuna.trial import TrialState

        trial = item.trial
        for key, value in outcome.user_attrs().items():
            trial.set_user_attr(key, value)
        if not outcome.reported_by_worker:
            for step, value in outcome.intermediate:
                if math.isfinite(value):
                    trial.report(value, step)
        state: TrialState
        value: float | None = None
        if outcome.outcome == keys.COMPLETE:
            state, value = TrialState.COMPLETE, outcome.value
            self.consecutive_failures = 0
        elif outcome.outcome == keys.EXPLODED:
            last = max((s for s, _ in outcome.intermediate), default=-1)
            sign = 1.0 if self.spec.objective.direction == "minimize" else -1.0
            trial.report(sign * PENALTY, max(outcome.steps_run, last + 1))
            state = TrialState.PRUNED
            self.consecutive_failures = 0
        elif outcome.outcome == keys.SLOW:
            state = TrialState.PRUNED
            self.consecutive_failures = 0
        else:
            state = TrialState.FAIL
            self.consecutive_failures += 1
        self.study.tell(trial, value, state=state, skip_if_finished=True)
        self.emit("trial", {"trial": trial.number, "outcome": outcome.outcome,
                            "value": outcome.value, "reason": outcome.reason,
                            "steps_run": outcome.steps_run, "params": trial.params,
                            "wall_time_s": outcome.wall_time_s,
                            "best": self._best_value()})

    def _close_lost(self, item: Running, outcome: str, reason: str) -> None:
        """A trial whose worker is gone: FAIL it with the reason, retry its params."""
        from optuna.trial import TrialState

        trial = item.trial
        wall = time.perf_counter() - item.started
        trial.set_user_attr(keys.OUTCOME, outcome)
        trial.set_user_attr(keys.REASON, reason)
        trial.set_user_attr(keys.STEPS_RUN, item.steps)  # at least these (worker's last word)
        trial.set_user_attr(keys.WALL_TIME, round(wall, 3))
        self.study.tell(trial, None, state=TrialState.FAIL, skip_if_finished=True)
        if self.tracker is not None and item.run_id is not None:
            self.tracker.close_trial_run(item.run_id, outcome, reason)
        retried = self._retry(trial.number, trial.params, item.attempt)
        self.emit("trial", {"trial": trial.number, "outcome": outcome, "value": None,
                            "reason": reason + ("; retrying" if retried else "; retries used up"),
                            "steps_run": item.steps, "params": trial.params,
                            "wall_time_s": wall, "best": self._best_value()})

    def _retry(self, number: int, params: dict[str, Any], attempt: int) -> bool:
        if attempt > self.options.max_retries:
            return False
        self.study.enqueue_trial(dict(params), user_attrs={keys.ATTEMPT: attempt + 1,
                                                           keys.RETRY_OF: number},
                                 skip_if_exists=False)
        return True

    def _recover_stale(self, study: Any, reason: str = "the sweep stopped before this trial "
                       "finished") -> None:
        """Close trials left RUNNING (by a driver that died, or one interrupted mid-ask) as
        FAIL (interrupted) and retry their params. SQLite: we hold the storage lock, so no
        other driver is running them. A server storage: only trials whose heartbeat is stale,
        and only the driver whose FAIL lands first retries one."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import Trial, TrialState

        stale = set(self.storage.stale_trial_ids(study._study_id)) if self.shared else set()
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if self.shared and frozen._trial_id not in stale:
                continue  # a live driver's (maybe ours)
            trial = Trial(study, frozen._trial_id)
            trial.set_user_attr(keys.OUTCOME, keys.INTERRUPTED)
            trial.set_user_attr(keys.REASON, reason)
            # The steps the driver last stored for it (or its last reported step): a lower
            # bound, and never the full budget.
            known = [int(frozen.user_attrs.get(keys.STEPS_RUN) or 0),
                     *(int(step) for step in frozen.intermediate_values)]
            try:
                trial.set_user_attr(keys.STEPS_RUN, min(max(known), self.spec.steps))
                if not study._storage.set_trial_state_values(frozen._trial_id,
                                                             TrialState.FAIL):
                    continue
            except UpdateFinishedTrialError:
                continue  # another driver closed it first, and retries it
            attempt = int(frozen.user_attrs.get(keys.ATTEMPT, 1))
            self._retry(frozen.number, frozen.params, attempt)
            self.emit("recovered", {"trial": frozen.number})

    def _interrupt(self) -> None:
        # Ctrl-C may land anywhere, even between ask() and dispatch: close what we know, then
        # anything else still RUNNING in the study. First a last word from the workers on the
        # steps their trials ran (those that still answer, within a second).
        with contextlib.suppress(Exception):  # best effort: the steps stay as last polled
            for item in self.running.values():
                item.asked = 0.0
            self._poll_progress()
            self._poll_progress(wait_s=1.0)
        for item in list(self.running.values()):
            self._close_lost(item, keys.INTERRUPTED, "interrupted (Ctrl-C); retried on resume")
        self.running.clear()
        if not self.shared:  # a server's other RUNNING trials may be another driver's
            self._recover_stale(self.study, "interrupted (Ctrl-C); retried on resume")

    @staticmethod
    def _heartbeat_s() -> float:
        from sweeps.storage import HEARTBEAT_S

        return float(HEARTBEAT_S)

    # ------------------------------------------------------------------ tracking
    def _open_tracking(self, study: Any) -> None:
        if not self.options.tracking:
            return
        from sweeps.tracking import StudyTracker

        # MLflow announces its schema migrations at INFO on every new store; keep the CLI quiet
        # unless the user asked for a level.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

        self.tracker = StudyTracker.open(
            self.spec.study, self.spec.to_dict(), self.options.tracking_uri,
            existing_parent_run_id=study.user_attrs.get(keys.STUDY_MLFLOW_RUN),
            workdir=self.options.workdir)
        study.set_user_attr(keys.STUDY_MLFLOW_RUN, self.tracker.parent_run_id)

    def _finish_tracking(self, summary: SweepSummary) -> None:
        if self.tracker is None:
            return
        summary.mlflow_url = self.tracker.ui_url()
        try:
            from sweeps.report import write_report

            out = Path(self.options.workdir) / "stabsweep-out" / self.spec.study
            paths = write_report(self.study, out)
            written = [getattr(paths, f.name) for f in dataclasses.fields(paths)
                       if f.name not in ("out_dir", "notes")]
            files = {Path(p).name: Path(p) for p in written if p}
            if summary.best is not None:
                from sweeps.export import export_best

                best = export_best(self.study, out / "best.yaml",
                                   storage_url=self.storage.display_url)
                files[best.path.name] = best.path
            self.tracker.finish_study(files, {
                "n_finished": sum(summary.counts.get(k, 0) for k in
                                  (keys.COMPLETE, keys.EXPLODED, keys.SLOW)),
                "n_exploded": summary.counts.get(keys.EXPLODED, 0),
                "best_value": summary.best["value"] if summary.best else math.nan,
                "steps_saved_fraction": summary.steps_saved})
        except Exception as exc:  # the study is safe in Optuna; tracking must not fail it
            self.emit("warning", {"message": f"could not finish the MLflow parent run: {exc}"})

    # ------------------------------------------------------------------ summary
    def _best_value(self) -> float | None:
        try:
            return float(self.study.best_value)
        except ValueError:
            return None

    def _summary(self, start: float) -> SweepSummary:
        from optuna.trial import TrialState

        from sweeps._trials import steps_accounting

        trials = self.study.get_trials(deepcopy=False)
        counts: dict[str, int] = {}
        steps = budget = 0
        for t in trials:
            outcome = t.user_attrs.get(keys.OUTCOME, t.state.name.lower())
            counts[outcome] = counts.get(outcome, 0) + 1
            if t.state.name in ("RUNNING", "WAITING"):
                continue
            ran, spent = steps_accounting(t.state.name, t.user_attrs.get(keys.STEPS_RUN),
                                          self.spec.steps)
            steps, budget = steps + ran, budget + spent
        best = None
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete:
            b = self.study.best_trial
            best = {"number": b.number, "value": b.value, "params": b.params}
        finished = sum(1 for t in trials if t.state.name in FINISHED_STATES)
        return SweepSummary(
            study=self.spec.study, storage=self.storage.display_url,
            n_trials=finished, counts=counts, best=best, steps_run=steps, steps_budget=budget,
            wall_time_s=time.perf_counter() - start,
            mlflow_url=self.tracker.ui_url() if self.tracker is not None else None,
            trials_this_run=self.trials_this_run)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        if self.ray_started:
            import ray

            ray.shutdown()
        if self.reaper is not None:  # stops what ray.shutdown left (its agents), then exits
            self.reaper.close()
        self.storage.close()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
