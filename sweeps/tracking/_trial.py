"""TrialTracker: one trial's MLflow run, fed from the training loop without stalling it.

Where a tracked trial's time went (``benchmarks/tracking_overhead.py``, deep_mlp): a writer
thread in the worker that encoded, sent and retried ``log_batch`` calls competed with training
for the GIL on every step (the MLflow client and SQLAlchemy are Python code; each hand-over
waits up to the 5 ms switch interval), and ``finish`` waited for the last sends, the artifact
uploads and, for exploded trials, two matplotlib plots (~0.5 s) before the trial could end.

Now the worker only writes: ``on_sync`` encodes the guard's records into metric points
(``_series.TraceEncoder``, a few microseconds a step) and appends them, 1000 points a line
(MLflow's ``log_batch`` limit) or once a second, to this trial's spool file
(``_spool.Spool``); ``finish`` appends the tags, the eval metrics, the artifacts (written
straight into the spool) and the run's status, and returns. There is no thread in the worker.
A separate uploader process per host and spool folder (``_uploader``, started on first use)
sends the spooled operations in order, batched as they were written, and marks each one done
once it landed; a store that is down keeps them in the spool (nothing is lost) until it is
back, the driver's end-of-sweep sync, or ``stabsweep sync``. Plots of exploded trials are drawn
by the uploader too, from the spooled ``trace.parquet``.

``TrackingSettings.upload = "inline"`` (tests, a process that must see its data landed when
``finish`` returns) uploads the trial's spool in-process in ``flush`` and ``finish`` instead.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sweeps.common import Outcome
from sweeps.tracking import _settings as names
from sweeps.tracking._series import EXPLOSION_WINDOW, Point, TraceEncoder
from sweeps.tracking._settings import TrackingSettings
from sweeps.tracking._sink import Sink, SinkStats
from sweeps.tracking._spool import resolve_placeholder

__all__ = ["TrackerStats", "TrialTracker"]

MAX_BATCH = 1000  # MLflow's log_batch limit on metrics
_MAX_TAG = 5000


@dataclass
class TrackerStats:
    """What one TrialTracker did; ``values_lost`` is always 0 (nothing is dropped)."""

    points: int = 0
    """metric points produced (spooled for the uploader, or sent inline)."""
    batches: int = 0
    """``log_batch`` operations written."""
    blocked: int = 0
    """kept for compatibility: the training thread never waits for the store now."""
    blocked_s: float = 0.0
    max_queue: int = 0
    values_lost: int = 0
    write_s: float = 0.0
    """time the training thread spent encoding and writing to the spool."""
    finish_s: float = 0.0
    """time ``finish`` took (artifacts written into the spool, the operations appended)."""
    sink: SinkStats | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrialTracker:
    """Logs one trial to its (usually driver-created) child run. See the module doc."""

    def __init__(self, settings: TrackingSettings, *, trial_number: int, fp16: bool = False,
                 study_name: str = "", send_interval: float = 1.0) -> None:
        from sweeps.tracking._uploader import ensure_uploader

        self.settings = settings
        self.trial_number = trial_number
        self.fp16 = fp16
        self.sink = Sink(settings.tracking_uri, settings.spool_dir,
                         name=f"trial-{trial_number}-{socket.gethostname()}-{os.getpid()}-"
                              f"{int(time.time() * 1000) % 10**8}")
        self.spool = self.sink.spool
        self.encoder = TraceEncoder(settings.layer_every)
        self.stats = TrackerStats(sink=self.sink.stats)
        self.send_interval = send_interval
        self.inline = settings.upload == "inline"
        self.run_name = settings.run_name or f"trial-{trial_number}"
        self._run_id = settings.run_id
        if self._run_id is None:  # nobody created our run: make a child of the study's run
            tags = {names.TAG_KIND: "trial", names.TAG_TRIAL: str(trial_number),
                    names.TAG_STATE: "running", names.TAG_STUDY: study_name}
            if settings.parent_run_id:
                tags[names.TAG_PARENT] = settings.parent_run_id
            self._run_id = self.sink.create_run(settings.experiment_id, self.run_name, tags)
        self._pending: list[Point] = []
        self._last_write = time.monotonic()
        self._nonfinite_tagged = False
        self._closed = False
        self._append({"op": "log_batch", "run": str(self._run_id), "tags": [
            [names.TAG_WORKER, f"{socket.gethostname()}:{os.getpid()}"]]})
        if not self.inline and not ensure_uploader(settings.spool_dir, settings.tracking_uri):
            self.inline = True  # no uploader process could start: upload in-process

    @classmethod
    def start(cls, task: Any) -> TrialTracker:
        """The tracker of ``task`` (a sweeps.worker.TrialTask whose ``tracking`` is set)."""
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
        """Encode the guard's new StepRecords; write them to the spool when a batch is due."""
        start = time.perf_counter()
        self._add(self.encoder.encode(records, _now_ms()))
        if self.encoder.first_nonfinite is not None and not self._nonfinite_tagged:
            # Live signal: the SQL store shows inf as 1.8e308 and NaN as NaN.
            self._nonfinite_tagged = True
            self._write(force=True)
            self._append({"op": "log_batch", "run": str(self._run_id), "tags": [
                [names.TAG_NONFINITE_STEP, str(self.encoder.first_nonfinite)]]})
        else:
            self._write(force=False)
        self.stats.write_s += time.perf_counter() - start

    def flush(self, timeout: float | None = None) -> bool:
        """Write what is pending and wait until this trial's spool has landed (or stays
        spooled: the store is down); False when ``timeout`` passed first."""
        if not self._closed:
            self._write(force=True)
        return self._land(timeout)

    def wait_landed(self, timeout: float | None = None) -> bool:
        """True once every operation of this trial reached the store."""
        return self._land(timeout, upload=False)

    # ------------------------------------------------------------------ ending
    def finish(self, result: Any, outcome: Any) -> str:
        """Spool everything: points, tags, artifacts, the run's end; its id. The uploader
        sends it (inline mode: sent before this returns)."""
        self._check_open("finish")
        start = time.perf_counter()
        ended = Outcome(outcome.outcome)
        state = str(ended)
        exploded = ended is Outcome.EXPLODED
        diagnosis = getattr(result, "diagnosis", None)
        verdict = getattr(result, "verdict", None)
        tags = {names.TAG_STATE: state, names.TAG_EXPLODED: "true" if exploded else "false",
                names.TAG_REASON: str(outcome.reason)[:_MAX_TAG] or state,
                names.TAG_STEPS_RUN: str(int(result.steps_run)),
                names.TAG_SKIPPED: str(int(getattr(outcome, "skipped_updates", 0) or 0)),
                names.TAG_RUN_COLOR: ended.look.color}
        onset = getattr(diagnosis, "onset_step", None)
        if exploded and onset is not None:
            tags[names.TAG_ONSET_STEP] = str(onset)
        first_layer = getattr(diagnosis, "first_layer", None)
        if exploded and first_layer:
            tags[names.TAG_FIRST_LAYER] = str(first_layer)
        kind = getattr(verdict, "kind", None) or getattr(diagnosis, "verdict_kind", None)
        if exploded:
            tags[names.TAG_VERDICT_KIND] = str(kind or "final_eval_nonfinite")
            at = getattr(verdict, "step", None)
            tags["mlflow.runName"] = (f"{self.run_name} [exploded"
                                      + (f" @{at}" if at is not None else "") + "]")
            tags[names.TAG_NOTE] = _explosion_note(diagnosis, outcome)[:_MAX_TAG]
        if verdict is not None:
            tags[names.TAG_VERDICT] = str(verdict)[:_MAX_TAG]
        if self.encoder.first_nonfinite is not None:
            tags[names.TAG_NONFINITE_STEP] = str(self.encoder.first_nonfinite)
        ts = _now_ms()
        self._add(self.encoder.close(ts))
        trace = getattr(result, "trace", None)
        window = None
        if exploded:
            end = verdict.step if verdict is not None else result.steps_run
            begin = onset if onset is not None else end
            window = max(begin - 20, end - EXPLOSION_WINDOW)
        fp16 = self.fp16 or getattr(getattr(result, "config", None), "precision", "") == "fp16"
        self._add(self.encoder.backfill(trace, ts, fp16=fp16, window_start=window))
        points: list[Point] = []
        for evaluation in getattr(result, "evals", []) or []:
            step = int(evaluation.get("step", result.steps_run))
            points += [[k, float(v), ts, step] for k, v in evaluation.items() if k != "step"]
        points.append(["steps_run", float(result.steps_run), ts, int(result.steps_run)])
        points.append(["skipped_updates", float(getattr(outcome, "skipped_updates", 0) or 0),
                       ts, int(result.steps_run)])
        points.append(["overflow_count", float(getattr(diagnosis, "overflow_count", 0) or 0),
                       ts, int(result.steps_run)])
        points.append(["train_time_s", float(result.wall_time_s), ts, int(result.steps_run)])
        self._add(points)
        folder = self._flush_with_tags(tags)
        self._write_artifacts(folder, result, outcome)
        self._append({"op": "artifacts", "run": str(self._run_id),
                      "dir": str(folder.relative_to(self.spool.root)), "artifact_path": None})
        plots = self.settings.plots
        if plots == "all" or (plots == "exploded" and exploded):
            self._append({"op": "plots", "run": str(self._run_id),
                          "dir": str(folder.relative_to(self.spool.root)),
                          "title": f"trial {self.trial_number}: {state}",
                          "trial": self.trial_number,
                          "verdict": verdict.to_dict() if verdict is not None else None})
        self._append({"op": "status", "run": str(self._run_id), "status": ended.look.mlflow_status,
                      "end_time": _now_ms()})
        self._closed = True
        self.stats.finish_s = time.perf_counter() - start
        if self.inline:
            self._land(None)
        else:
            self._kick()
        return self.run_id

    def finish_failed(self, exc: BaseException, steps_run: int = 0) -> str:
        """The workload raised after ``steps_run`` steps: tag it, attach the traceback, end the
        run FAILED."""
        self._check_open("finish_failed")
        first = str(exc).splitlines()[0] if str(exc) else ""
        tags = {names.TAG_STATE: Outcome.FAILED, names.TAG_EXPLODED: "false",
                names.TAG_REASON: f"workload raised {type(exc).__name__}: {first}"[:_MAX_TAG],
                names.TAG_STEPS_RUN: str(int(steps_run)),
                names.TAG_RUN_COLOR: Outcome.FAILED.look.color}
        self._add(self.encoder.close(_now_ms()))
        folder = self._flush_with_tags(tags)
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        (folder / "error.txt").write_text(text)
        self._append({"op": "artifacts", "run": str(self._run_id),
                      "dir": str(folder.relative_to(self.spool.root)), "artifact_path": None})
        self._append({"op": "status", "run": str(self._run_id),
                      "status": Outcome.FAILED.look.mlflow_status,
                      "end_time": _now_ms()})
        self._closed = True
        if self.inline:
            self._land(None)
        else:
            self._kick()
        return self.run_id

    def _flush_with_tags(self, tags: dict[str, str]) -> Path:
        """Spool the pending points and the run's final tags; a fresh folder for its files."""
        self._write(force=True)
        self._append({"op": "log_batch", "run": str(self._run_id),
                      "tags": sorted(tags.items())})
        folder = self.spool.files_dir / str(self.spool.reserve_id())
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(f"TrialTracker.{what}: trial {self.trial_number}'s run "
                               f"{self.run_id} is already finished; start a new TrialTracker "
                               "for another run.")

    def _write_artifacts(self, folder: Path, result: Any, outcome: Any) -> None:
        trace = result.trace
        jobs = [
            ("trace.parquet", lambda: trace.to_parquet(folder / "trace.parquet", index=False)),
            ("diagnosis.json", lambda: (folder / "diagnosis.json").write_text(json.dumps(
                {"outcome": outcome.outcome, "reason": outcome.reason,
                 **result.diagnosis.to_dict()}, indent=2, default=str))),
        ]
        for name, job in jobs:
            try:
                job()
            except Exception as exc:  # an artifact that fails must not lose the run's data
                self.sink.stats.errors.append(f"{name}: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ the spool
    def _add(self, points: list[Point]) -> None:
        self._pending.extend(points)
        self.stats.points += len(points)

    def _write(self, force: bool) -> None:
        """Append pending points as ``log_batch`` lines of MAX_BATCH; a partial one if due."""
        if not self._pending:
            return
        due = force or time.monotonic() - self._last_write >= self.send_interval
        while self._pending and (due or len(self._pending) >= MAX_BATCH):
            chunk, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self._append({"op": "log_batch", "run": str(self._run_id), "metrics": chunk})
            self.stats.batches += 1
            self._last_write = time.monotonic()

    def _append(self, op: dict[str, Any]) -> None:
        self.spool.append(op)
        self.sink.stats.ops_spooled += 1
        self.sink.stats.values_spooled += len(op.get("metrics", ()))

    def _kick(self) -> None:
        """Tell this host's uploader there is work (it also polls)."""
        from sweeps.tracking._uploader import kick

        kick(self.settings.spool_dir)

    def _land(self, timeout: float | None, upload: bool = True) -> bool:
        """Inline: upload this trial's spool now (what cannot land stays spooled). Background:
        wait for the uploader, at most ``timeout`` s (60 s if None); True at once when the
        store is unreachable (the spool keeps everything for a later sync)."""
        if self.inline and upload:
            self.sink.offline = True  # everything of ours is in the spool: send it in order
            self.sink.drain(force=True)
            return True
        deadline = time.monotonic() + (60.0 if timeout is None else timeout)
        while self.spool.pending():
            if not self.sink.reachable():
                return True
            if time.monotonic() >= deadline:
                return False
            self._kick()
            time.sleep(0.05)
        return True


def _explosion_note(diagnosis: Any, outcome: Any) -> str:
    """The run's description (Overview tab, markdown): what exploded, where, and the fix."""
    if diagnosis is None:
        return f"**Exploded**: {outcome.reason}"
    lines = [f"**Exploded**: `{getattr(diagnosis, 'verdict_kind', None) or 'explosion'}` at "
             f"step {getattr(diagnosis, 'verdict_step', None)}; onset at step "
             f"{getattr(diagnosis, 'onset_step', None)}, first layer to rise "
             f"`{getattr(diagnosis, 'first_layer', None) or 'unknown'}`."]
    rate = getattr(diagnosis, "growth_rate", None)
    if rate is not None and math.isfinite(rate):
        lines.append(f"Global gradient norm grew x{rate:.3g} per step from onset to verdict.")
    suggestions = getattr(diagnosis, "suggestions", None) or []
    if suggestions:
        lines += ["", "Suggested fixes, best first:", ""]
        lines += [f"{i}. {s.text} `{s.changes}`" for i, s in enumerate(suggestions[:3], 1)]
    lines += ["", "Charts: `grad_norm` (global), `grad_norm_log10` (per layer, log10). "
              "Artifacts: `grad_norm_trace.png`, `layer_heatmap.png`, `trace.parquet`."]
    return "\n".join(lines)


def _now_ms() -> int:
    return int(time.time() * 1000)
