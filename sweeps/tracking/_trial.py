"""TrialTracker: one trial's MLflow run, fed from the training loop without stalling it.

The guard calls ``on_sync(records)`` after each host transfer; that only puts the list on a
bounded queue (about a microsecond). A background thread turns the records into metric points
(``_series.TraceEncoder``) and sends them with ``log_batch`` (<= 1000 points per call) every
``send_interval`` seconds or every 1000 points. If the queue is full (the store is slower than
training for long), ``on_sync`` waits for room: values are never dropped; the time spent
waiting is counted in ``stats.blocked_s``. ``finish`` renders the artifacts while the thread
sends what is left, then tags and ends the run.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sweeps import keys
from sweeps.tracking import _settings as names
from sweeps.tracking._series import EXPLOSION_WINDOW, Point, TraceEncoder
from sweeps.tracking._settings import TrackingSettings
from sweeps.tracking._sink import Sink, SinkStats
from sweeps.tracking._spool import resolve_placeholder

__all__ = ["TrackerStats", "TrialTracker"]

MAX_BATCH = 1000  # MLflow's log_batch limit on metrics
_QUEUE_ITEMS = 8192  # syncs held in memory at most (one per step on CPU, ten on GPU)
_PAUSE_S = 0.1  # the writer wakes at most this often: fewer GIL hand-overs with training


@dataclass
class TrackerStats:
    """What one TrialTracker did; ``values_lost`` is always 0 (nothing is dropped)."""

    points: int = 0
    """metric points produced (sent or spooled)."""
    batches: int = 0
    blocked: int = 0
    """on_sync calls that waited for room in the queue."""
    blocked_s: float = 0.0
    max_queue: int = 0
    values_lost: int = 0
    sink: SinkStats | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrialTracker:
    """Logs one trial to its (usually driver-created) child run. See the module doc."""

    def __init__(self, settings: TrackingSettings, *, trial_number: int, fp16: bool = False,
                 study_name: str = "", send_interval: float = 1.0) -> None:
        self.settings = settings
        self.trial_number = trial_number
        self.fp16 = fp16
        self.sink = Sink(settings.tracking_uri, settings.spool_dir,
                         name=f"trial-{trial_number}-{socket.gethostname()}-{os.getpid()}-"
                              f"{int(time.time() * 1000) % 10**8}")
        self.encoder = TraceEncoder(settings.layer_every)
        self.stats = TrackerStats(sink=self.sink.stats)
        self.send_interval = send_interval
        self._run_id = settings.run_id
        if self._run_id is None:  # nobody created our run: make a child of the study's run
            tags = {names.TAG_KIND: "trial", names.TAG_TRIAL: str(trial_number),
                    names.TAG_STATE: "running", names.TAG_STUDY: study_name}
            if settings.parent_run_id:
                tags[names.TAG_PARENT] = settings.parent_run_id
            self._run_id = self.sink.create_run(settings.experiment_id,
                                                f"trial-{trial_number}", tags)
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=_QUEUE_ITEMS)
        self._wake = threading.Event()
        self._pending: list[Point] = []
        self._last_send = time.monotonic()
        self._nonfinite_tagged = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"mlflow-trial-{trial_number}",
                                        daemon=True)
        self._thread.start()
        self._op("log_batch", tags=[[names.TAG_WORKER, f"{socket.gethostname()}:{os.getpid()}"]])

    @classmethod
    def start(cls, task: Any) -> TrialTracker:
        """The tracker of ``task`` (a sweeps.objective.TrialTask whose ``tracking`` is set)."""
        settings = task.tracking
        if not isinstance(settings, TrackingSettings):
            raise TypeError("task.tracking must be a sweeps.tracking.TrackingSettings (from "
                            f"StudyTracker.settings); got {type(settings).__name__}.")
        fp16 = str((task.config or {}).get("precision", "")) == "fp16"
        return cls(settings, trial_number=task.trial_number, fp16=fp16,
                   study_name=task.study_name)

    @property
    def run_id(self) -> str:
        """The run's id (a placeholder ``offline-...`` while the run awaits creation)."""
        real = resolve_placeholder(self.settings.spool_dir, str(self._run_id))
        return real or str(self._run_id)

    # ------------------------------------------------------------------ training thread
    def on_sync(self, records: list[Any]) -> None:
        """Hand the guard's new StepRecords to the writer; returns at once unless it is full."""
        try:
            self._queue.put_nowait(("records", records))
        except queue.Full:
            self.stats.blocked += 1
            self._wake.set()  # the writer may be pausing: we are waiting for it
            start = time.perf_counter()
            while True:
                try:
                    self._queue.put(("records", records), timeout=1.0)
                    break
                except queue.Full:
                    if not self._thread.is_alive():  # cannot happen short of a crash
                        self._handle(("records", records))
                        break
            self.stats.blocked_s += time.perf_counter() - start

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything handed over so far was sent (or spooled); False on timeout."""
        if self._closed:
            return True
        done = threading.Event()

        def barrier() -> None:
            self._send(force=True)
            done.set()

        self._call(barrier)
        return done.wait(timeout)

    # ------------------------------------------------------------------ ending
    def finish(self, result: Any, outcome: Any) -> str:
        """Send everything, tag the outcome, attach the artifacts, end the run; its id."""
        self._check_open("finish")
        state = str(outcome.outcome)
        exploded = state == keys.EXPLODED
        diagnosis = getattr(result, "diagnosis", None)
        verdict = getattr(result, "verdict", None)
        tags = {names.TAG_STATE: state, names.TAG_EXPLODED: "true" if exploded else "false",
                names.TAG_REASON: str(outcome.reason)[:5000] or state}
        onset = getattr(diagnosis, "onset_step", None)
        if exploded and onset is not None:
            tags[names.TAG_ONSET_STEP] = str(onset)
        first_layer = getattr(diagnosis, "first_layer", None)
        if exploded and first_layer:
            tags[names.TAG_FIRST_LAYER] = str(first_layer)
        kind = getattr(verdict, "kind", None) or getattr(diagnosis, "verdict_kind", None)
        if exploded:
            tags[names.TAG_VERDICT_KIND] = str(kind or "final_eval_nonfinite")
        if verdict is not None:
            tags[names.TAG_VERDICT] = str(verdict)[:5000]
        ts = _now_ms()
        self._call(lambda: self._add(self.encoder.close(ts)))
        trace = getattr(result, "trace", None)
        window = None
        if exploded:
            end = verdict.step if verdict is not None else result.steps_run
            start = onset if onset is not None else end
            window = max(start - 20, end - EXPLOSION_WINDOW)
        fp16 = self.fp16 or getattr(getattr(result, "config", None), "precision", "") == "fp16"
        self._call(lambda: self._add(self.encoder.backfill(trace, ts, fp16=fp16,
                                                            window_start=window)))
        points: list[Point] = []
        for evaluation in getattr(result, "evals", []) or []:
            step = int(evaluation.get("step", result.steps_run))
            points += [[k, float(v), ts, step] for k, v in evaluation.items() if k != "step"]
        points.append(["steps_run", float(result.steps_run), ts, int(result.steps_run)])
        points.append(["overflow_count", float(getattr(diagnosis, "overflow_count", 0) or 0),
                       ts, int(result.steps_run)])
        points.append(["train_time_s", float(result.wall_time_s), ts, int(result.steps_run)])
        self._call(lambda: self._add(points))
        with tempfile.TemporaryDirectory(prefix="stabsweep-artifacts-") as tmp:
            self._write_artifacts(Path(tmp), result, outcome)  # overlaps the writer's sends
            self._call(lambda: self._submit_tags(tags))
            self._op("artifacts", local=tmp, artifact_path=None)
            status = "FAILED" if state == keys.FAILED else "FINISHED"
            self._op("status", status=status, end_time=_now_ms())
            self._stop()
        return self.run_id

    def finish_failed(self, exc: BaseException) -> str:
        """The workload raised: tag it, attach the traceback, end the run FAILED."""
        self._check_open("finish_failed")
        first = str(exc).splitlines()[0] if str(exc) else ""
        tags = {names.TAG_STATE: keys.FAILED, names.TAG_EXPLODED: "false",
                names.TAG_REASON: f"workload raised {type(exc).__name__}: {first}"[:5000]}
        ts = _now_ms()
        self._call(lambda: self._add(self.encoder.close(ts)))
        with tempfile.TemporaryDirectory(prefix="stabsweep-artifacts-") as tmp:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            (Path(tmp) / "error.txt").write_text(text)
            self._call(lambda: self._submit_tags(tags))
            self._op("artifacts", local=tmp, artifact_path=None)
            self._op("status", status="FAILED", end_time=_now_ms())
            self._stop()
        return self.run_id

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(f"TrialTracker.{what}: trial {self.trial_number}'s run "
                               f"{self.run_id} is already finished; start a new TrialTracker "
                               "for another run.")

    def _write_artifacts(self, folder: Path, result: Any, outcome: Any) -> None:
        from stability.plots import plot_layer_heatmap, plot_trace

        trace = result.trace
        jobs: list[tuple[str, Callable[[], Any]]] = [
            ("trace.parquet", lambda: trace.to_parquet(folder / "trace.parquet", index=False)),
            ("diagnosis.json", lambda: (folder / "diagnosis.json").write_text(json.dumps(
                {"outcome": outcome.outcome, "reason": outcome.reason,
                 **result.diagnosis.to_dict()}, indent=2, default=str))),
        ]
        plots = self.settings.plots
        if plots == "all" or (plots == "exploded" and outcome.outcome == keys.EXPLODED):
            jobs.append(("grad_norm_trace.png", lambda: plot_trace(
                trace, folder / "grad_norm_trace.png", verdict=result.verdict,
                diagnosis=result.diagnosis, title=f"trial {self.trial_number}: "
                f"{outcome.outcome}")))
        if jobs[-1][0].endswith(".png") and any(str(c).startswith("grad_norm/")
                                                for c in trace.columns):
            jobs.append(("layer_heatmap.png", lambda: plot_layer_heatmap(
                trace, folder / "layer_heatmap.png", title=f"trial {self.trial_number}: "
                "per-layer gradient norm")))
        for name, job in jobs:
            try:
                job()
            except Exception as exc:  # a plot that fails must not lose the run's data
                self.sink.stats.errors.append(f"{name}: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ writer thread
    def _op(self, kind: str, **fields: Any) -> None:
        self._put(("op", {"op": kind, "run": str(self._run_id), **fields}))

    def _call(self, fn: Callable[[], None]) -> None:
        self._put(("call", fn))

    def _put(self, item: tuple[str, Any]) -> None:
        self._queue.put(item)
        self._wake.set()

    def _stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._put(("stop", None))
        self._thread.join()

    def _add(self, points: list[Point]) -> None:
        self._pending.extend(points)
        self.stats.points += len(points)

    def _submit_tags(self, tags: dict[str, str]) -> None:
        """The outcome's tags (on the writer thread: it knows the first non-finite step)."""
        if self.encoder.first_nonfinite is not None:
            tags = {**tags, names.TAG_NONFINITE_STEP: str(self.encoder.first_nonfinite)}
        self._send(force=True)
        self.sink.submit({"op": "log_batch", "run": str(self._run_id),
                          "tags": sorted(tags.items())})

    def _loop(self) -> None:
        running = True
        while running:
            items: list[tuple[str, Any]] = []
            try:
                items.append(self._queue.get(timeout=self.send_interval))
                while True:
                    items.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            self.stats.max_queue = max(self.stats.max_queue, len(items))
            for item in items:
                if item[0] == "stop":
                    running = False
                self._handle(item)
            self._send(force=not running)
            if running and self.sink.offline:
                self.sink.drain(force=False)
            roomy = self._queue.qsize() * 2 < self._queue.maxsize
            if running and roomy and not self._wake.is_set():
                self._wake.wait(_PAUSE_S)  # let training run; a finish or a full queue wakes us
            self._wake.clear()
        if self.sink.offline:
            self.sink.drain(force=True)  # one last try; what is left waits in the spool

    def _handle(self, item: tuple[str, Any]) -> None:
        kind, payload = item
        try:
            if kind == "records":
                self._add(self.encoder.encode(payload, _now_ms()))
                if self.encoder.first_nonfinite is not None and not self._nonfinite_tagged:
                    # Live signal: the SQL store shows inf as 1.8e308 and NaN as NaN.
                    self._nonfinite_tagged = True
                    self._send(force=True)
                    self.sink.submit({"op": "log_batch", "run": str(self._run_id), "tags": [
                        [names.TAG_NONFINITE_STEP, str(self.encoder.first_nonfinite)]]})
            elif kind == "call":
                payload()
            elif kind == "op":
                self._send(force=True)
                self.sink.submit(payload)
        except Exception as exc:  # never let the writer die: count it, keep going
            self.sink.stats.errors.append(f"{kind}: {type(exc).__name__}: {exc}")

    def _send(self, force: bool) -> None:
        """Send pending points in batches of MAX_BATCH; a partial batch only if due/forced."""
        due = force or time.monotonic() - self._last_send >= self.send_interval
        if not self._pending or not (due or len(self._pending) >= MAX_BATCH):
            return
        while self._pending and (due or len(self._pending) >= MAX_BATCH):
            chunk, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self.sink.submit({"op": "log_batch", "run": str(self._run_id), "metrics": chunk})
            self.stats.batches += 1
        self._last_send = time.monotonic()


def _now_ms() -> int:
    return int(time.time() * 1000)

