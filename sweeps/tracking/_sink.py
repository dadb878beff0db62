"""Sink: send MLflow operations, survive a locked SQLite file or a tracking server that is down.

Every write of the tracking layer is an operation (a dict, the same form the spool keeps):

==============  ==================================================================
``create_run``  run (a placeholder id), experiment_id, run_name, tags, start_time
``log_batch``   run, metrics ``[[key, value, timestamp_ms, step], ...]`` (<= 1000),
                params ``[[key, value], ...]`` and tags (<= 100 each)
``artifacts``   run, a local directory (``local``) or its spooled copy (``dir``),
                artifact_path
``plots``       run, the spooled artifacts (``dir``) to draw a trial's plots from, title,
                trial, verdict (drawn by whoever uploads: off the trial's critical path)
``status``      run, status (RUNNING, FINISHED, FAILED, KILLED), end_time
==============  ==================================================================

``Sink.submit`` sends one at once. "database is locked" (several processes writing one SQLite
file) is retried with backoff for up to ``lock_wait_s``. A store that cannot be reached sends
the sink offline: a warning, once per process, and from then on operations are appended to the
writer's spool file, in order, until a later attempt (at most every ``retry_s``) uploads the
spool; then it sends directly again. A store that refuses an operation for good (say, a run
deleted meanwhile) gets it counted in ``stats.rejected`` with a warning, never dropped
silently.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_setup import redact
from sweeps.tracking._failures import (
    TrackingUnavailable,
    Unresolved,
    is_locked,
    is_transient,
    quiet_lock_noise,
)
from sweeps.tracking._plots import render_plots
from sweeps.tracking._settings import TAG_PARENT, TAG_PLACEHOLDER, quick_http_failures
from sweeps.tracking._spool import (
    Spool,
    is_placeholder,
    new_placeholder,
    record_placeholder,
    resolve_placeholder,
)

__all__ = ["Sink", "SinkStats", "TrackingUnavailable"]

_log = logging.getLogger("stabsweep.tracking")
_WARNED: set[str] = set()
_WARN_LOCK = threading.Lock()


@dataclass
class SinkStats:
    ops_sent: int = 0
    values_sent: int = 0
    ops_spooled: int = 0
    values_spooled: int = 0
    rejected: int = 0
    runs_created: int = 0
    """runs created from a spool (they were created while the store was down)."""
    lock_retries: int = 0
    offline_events: int = 0
    errors: list[str] = field(default_factory=list)


class Sink:
    """Sends operations to one tracking URI; spools them while the store is unreachable."""

    def __init__(self, tracking_uri: str, spool_dir: str | Path, *, name: str | None = None,
                 retry_s: float = 10.0, lock_wait_s: float = 120.0) -> None:
        self.uri = tracking_uri
        self.spool_dir = Path(spool_dir)
        self.spool = Spool(self.spool_dir, redact(tracking_uri), name)
        self.retry_s = retry_s
        self.lock_wait_s = lock_wait_s
        self.offline = False
        """True while operations go to the spool (it holds something not sent yet)."""
        self.stats = SinkStats()
        self._client: Any = None
        self._next_try = 0.0
        if tracking_uri.startswith(("http://", "https://")):
            quick_http_failures()

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            quiet_lock_noise()
            self._client = MlflowClient(self.uri)
        return self._client

    # ------------------------------------------------------------------ sending
    def submit(self, op: dict[str, Any]) -> bool:
        """Send ``op`` now, or spool it; True when it landed now."""
        if not self.offline or self.drain(force=False):
            try:
                self._run(op)
                return True
            except TrackingUnavailable as exc:
                self._go_offline(exc)
            except Unresolved:
                self.offline = True
            except Exception as exc:
                if not is_transient(exc):
                    self._reject(op, exc)
                    return False
                self._go_offline(exc)
        self._spool_op(op)
        return False

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str],
                   start_time: int | None = None) -> str:
        """A new run's id; a placeholder (``offline-...``) when the store is unreachable."""
        start_time = start_time if start_time is not None else _now_ms()
        op = {"op": "create_run", "run": new_placeholder(), "experiment_id": experiment_id,
              "run_name": run_name, "tags": tags, "start_time": start_time}
        if not self.offline or self.drain(force=False):
            try:
                run = self._retry_locked(lambda: self.client.create_run(
                    experiment_id, start_time=start_time, tags=self._resolved_tags(tags),
                    run_name=run_name))
                self.stats.ops_sent += 1
                return str(run.info.run_id)
            except Unresolved:
                self.offline = True
            except Exception as exc:
                if not is_transient(exc) and not isinstance(exc, TrackingUnavailable):
                    raise
                self._go_offline(exc)
        self._spool_op(op)
        return str(op["run"])

    def drain(self, force: bool = True) -> bool:
        """Upload this writer's spool, in order; True when nothing is left in it.

        Without ``force``, tries at most once every ``retry_s`` seconds.
        """
        if not self.offline:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        left = self.upload(self.spool) if self.reachable() else 1
        if left:
            self._next_try = time.monotonic() + self.retry_s
            return False
        self.offline = False
        _log.info("MLflow store %s reachable again: spooled operations uploaded.",
                  redact(self.uri))
        return True

    def reachable(self) -> bool:
        """Cheap check before uploading a spool: ``GET /health`` for a tracking server."""
        if not self.uri.startswith(("http://", "https://")):
            return True
        import urllib.error
        import urllib.request
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.uri)
        netloc = parts.netloc.rpartition("@")[2]  # credentials never go into a probe URL
        url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
        try:
            with urllib.request.urlopen(url, timeout=2.0):
                return True
        except urllib.error.HTTPError:
            return True  # it answered (a proxy may want credentials): try the real thing
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def upload(self, spool: Spool) -> int:
        """Send ``spool``'s pending operations in order; how many are left (0 = all landed)."""
        with spool.locked():
            pending = spool.pending()
            for i, op in enumerate(pending):
                try:
                    self._run(op, spool)
                except (Unresolved, TrackingUnavailable):
                    return len(pending) - i
                except Exception as exc:
                    if is_transient(exc):
                        return len(pending) - i
                    self._reject(op, exc)
                    spool.mark_rejected(int(op["id"]), f"{type(exc).__name__}: {exc}")
                    continue
                spool.mark_done(int(op["id"]))
        return 0

    # ------------------------------------------------------------------ internals
    def _run(self, op: dict[str, Any], spool: Spool | None = None) -> None:
        kind = op["op"]
        if kind == "create_run":
            self._retry_locked(lambda: self._create_from_spool(op))
            self.stats.ops_sent += 1
            return
        run_id = resolve_placeholder(self.spool_dir, op["run"])
        if run_id is None:
            raise Unresolved(op["run"])
        client = self.client
        if kind == "log_batch":
            from mlflow.entities import Metric, Param, RunTag

            metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in
                       op.get("metrics", ())]
            params = [Param(k, str(v)) for k, v in op.get("params", ())]
            tags = [RunTag(k, v) for k, v in self._resolved_tags(dict(op.get("tags", ()))
                                                                  ).items()]
            self._retry_locked(lambda: client.log_batch(run_id, metrics=metrics,
                                                        params=params, tags=tags))
            self.stats.values_sent += len(metrics)
        elif kind == "artifacts":
            local = op.get("local") or str((spool or self.spool).root / op["dir"])
            self._retry_locked(lambda: client.log_artifacts(run_id, local,
                                                            op.get("artifact_path")))
        elif kind == "plots":
            import tempfile

            folder = (spool or self.spool).root / op["dir"]
            with tempfile.TemporaryDirectory(prefix="stabsweep-plots-") as tmp:
                if render_plots(folder, Path(tmp), op, self.stats.errors):
                    self._retry_locked(lambda: client.log_artifacts(run_id, tmp, None))
        elif kind == "status":
            if op["status"] == "RUNNING":
                self._retry_locked(lambda: client.update_run(run_id, status="RUNNING"))
            else:
                self._retry_locked(lambda: client.set_terminated(
                    run_id, status=op["status"], end_time=op.get("end_time")))
        else:
            raise ValueError(f"unknown tracking operation {kind!r} in the spool")
        self.stats.ops_sent += 1

    def _create_from_spool(self, op: dict[str, Any]) -> None:
        placeholder = str(op["run"])
        if resolve_placeholder(self.spool_dir, placeholder) is not None:
            return
        found = self.client.search_runs(
            [op["experiment_id"]], f"tags.`{TAG_PLACEHOLDER}` = '{placeholder}'",
            max_results=1)
        if found:
            run_id = found[0].info.run_id
        else:
            tags = {**self._resolved_tags(op.get("tags") or {}), TAG_PLACEHOLDER: placeholder}
            run_id = self.client.create_run(op["experiment_id"], start_time=op["start_time"],
                                            tags=tags, run_name=op["run_name"]).info.run_id
            self.stats.runs_created += 1
        record_placeholder(self.spool_dir, placeholder, run_id)

    def _resolved_tags(self, tags: dict[str, str]) -> dict[str, str]:
        parent = tags.get(TAG_PARENT)
        if parent is not None and is_placeholder(parent):
            real = resolve_placeholder(self.spool_dir, parent)
            if real is None:
                raise Unresolved(parent)
            tags = {**tags, TAG_PARENT: real}
        return tags

    def _retry_locked(self, call: Any) -> Any:
        """``call()``, retried with backoff while SQLite says the database is locked."""
        deadline = time.monotonic() + self.lock_wait_s
        delay = 0.05
        while True:
            try:
                return call()
            except Exception as exc:
                if not is_locked(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise TrackingUnavailable(
                        f"{redact(self.uri)} stayed locked for {self.lock_wait_s:g} s") from exc
                self.stats.lock_retries += 1
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)

    def _spool_op(self, op: dict[str, Any]) -> None:
        self.offline = True
        if op["op"] == "artifacts" and "local" in op:
            # The caller deletes its directory afterwards: keep a copy with the operation.
            local = op["local"]
            op = {k: v for k, v in op.items() if k != "local"}
            op["dir"] = self.spool.stash(local, self.spool.reserve_id())
        self.spool.append(op)
        self.stats.ops_spooled += 1
        self.stats.values_spooled += len(op.get("metrics", ()))

    def _go_offline(self, exc: BaseException) -> None:
        if not self.offline:
            self.stats.offline_events += 1
        self.offline = True
        self._next_try = time.monotonic() + self.retry_s
        key = redact(self.uri)
        with _WARN_LOCK:
            if key in _WARNED:
                return
            _WARNED.add(key)
        warnings.warn(
            f"MLflow tracking store {key} is unreachable ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}). The sweep goes on; what "
            f"cannot be sent is spooled under {self.spool_dir} and uploaded when the store is "
            "back, or run `stabsweep sync` later. (Warned once per process.)",
            RuntimeWarning, stacklevel=3)

    def _reject(self, op: dict[str, Any], exc: BaseException) -> None:
        self.stats.rejected += 1
        message = (f"MLflow refused {op['op']} for run {op.get('run')}: {type(exc).__name__}: "
                   f"{str(exc)[:300]}")
        self.stats.errors.append(message)
        warnings.warn(message + " (counted in the tracker's stats.rejected)", RuntimeWarning,
                      stacklevel=3)


def _now_ms() -> int:
    return int(time.time() * 1000)

