"""StudyTracker: the driver's side of MLflow tracking (experiment, study run, trial runs).

The driver creates each trial's run before it dispatches the trial, so that a worker that dies
leaves a run the driver can still close (``close_trial_run``), and a retried trial never leaves
a run that looks like a success. Run layout::

    experiment <study>                 tag mlflow.experimentKind=custom_model_development,
                                       tag mlflow.sharedViewState.stabsweep (the view below)
      run <study>                      the study: spec as params + spec.yaml, report files,
                                       a link to its best trial (description, tag)
        run trial-<n>[-retry<k>]       mlflow.parentRunId, params = the sampled config;
                                       an exploded one is renamed ``trial-<n> [exploded @<step>]``,
                                       ends KILLED (a red cross) and has a red dot

The URL to open and the shared view behind it: :mod:`sweeps.tracking._view`; getting or
creating the experiment and the study's run: :mod:`sweeps.tracking._experiment`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow_setup import redact, resolve_tracking_uri
from sweeps.common import Outcome
from sweeps.tracking import _settings as names
from sweeps.tracking._experiment import reusable_run, study_experiment
from sweeps.tracking._failures import is_transient
from sweeps.tracking._series import metric_key
from sweeps.tracking._settings import DEFAULT_PLOTS, TrackingSettings, default_spool_dir
from sweeps.tracking._sink import Sink
from sweeps.tracking._spool import Spool, resolve_placeholder, spool_files
from sweeps.tracking._sync import SyncReport, sync_spool
from sweeps.tracking._view import study_url, view_state

__all__ = ["StudyTracker", "flatten"]

_MAX_PER_BATCH = 100  # MLflow's log_batch limit on params and on tags
_PARAM_LEN = 6000
_SYNC_EVERY_S = 30.0


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists as JSON; values cut to 6000 chars."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[metric_key(name)] = text[:_PARAM_LEN]
    return out


class StudyTracker:
    """The study's experiment and run, and its trials' runs. Build it with :meth:`open`."""

    enabled = True
    """(a NullTracker is not: nothing is logged without MLflow)"""

    def __init__(self, sink: Sink, study_name: str, experiment_id: str, parent_run_id: str,
                 layer_every: int | None = None, plots: str = DEFAULT_PLOTS,
                 objective: tuple[str, str] = ("eval_loss", "minimize")) -> None:
        self.sink = sink
        self.objective = objective
        """(metric, direction) of the study: the view's sort, the best trial."""
        self._run_names: dict[str, str] = {}
        self._trial_runs: dict[int, str] = {}
        self.study_name = study_name
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.layer_every = layer_every
        self.plots = plots
        self.resumed = False
        self._next_sync = time.monotonic() + _SYNC_EVERY_S

    @classmethod
    def open(cls, study_name: str, spec_dict: Mapping[str, Any], tracking_uri: str | None,
             existing_parent_run_id: str | None = None, *, workdir: str | Path | None = None,
             spool_dir: str | Path | None = None, layer_every: int | None = None,
             plots: str = DEFAULT_PLOTS) -> StudyTracker:
        """Get or create the study's experiment and run (reused when ``existing_parent_run_id``
        names a live run of that experiment, as on resume).

        ``tracking_uri`` None: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<workdir>/mlflow.db``
        (``mlflow_setup.resolve_tracking_uri``). ``spool_dir`` defaults to
        ``<workdir>/.stabsweep/spool``; ``workdir`` to the current directory.

        Raises:
            RuntimeError: the store cannot be reached now (nothing was started yet: fix the
                URI or start the server, e.g. ``stabsweep ui``).
            ValueError: the experiment named after the study was deleted.
        """
        tracking_uri = resolve_tracking_uri(tracking_uri, workdir)
        if spool_dir is None:
            spool = (str(Path(workdir).resolve() / ".stabsweep" / "spool") if workdir is not None
                     else default_spool_dir())
        else:
            spool = str(Path(spool_dir).resolve())
        # Validate the knobs before touching the store (nothing is created on bad input).
        checked = TrackingSettings(tracking_uri=tracking_uri, experiment_id="0",
                                   spool_dir=spool, layer_every=layer_every, plots=plots)
        sink = Sink(tracking_uri, spool,
                    name=f"study-{study_name}-{socket.gethostname()}-{os.getpid()}")
        try:
            experiment_id = study_experiment(sink.client, study_name, tracking_uri)
            parent = reusable_run(sink.client, existing_parent_run_id, experiment_id)
        except Exception as exc:
            if is_transient(exc):
                raise RuntimeError(
                    f"cannot reach the MLflow tracking store {redact(tracking_uri)} "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Start it "
                    "(`stabsweep ui` serves the local store), fix the tracking URI, or run "
                    "without tracking.") from exc
            raise
        tracker = cls(sink, study_name, experiment_id, parent or "", layer_every, plots,
                      _objective(spec_dict))
        tracker._set_view(spec_dict)
        if checked.upload == "background":
            from sweeps.tracking._uploader import ensure_uploader

            ensure_uploader(spool, tracking_uri)  # warm before the first trial ends
        if parent is not None:
            tracker.resumed = True
            sink.submit({"op": "status", "run": parent, "status": "RUNNING"})
            sink.submit({"op": "log_batch", "run": parent,
                         "tags": [["stabsweep.resumed_at", str(int(time.time()))]]})
            return tracker
        tracker.parent_run_id = sink.create_run(
            experiment_id, study_name,
            {names.TAG_KIND: "study", names.TAG_STUDY: study_name,
             "mlflow.note.content": str(spec_dict.get("description") or "")[:5000]})
        params = sorted(flatten(spec_dict).items())
        for i in range(0, len(params), _MAX_PER_BATCH):
            sink.submit({"op": "log_batch", "run": tracker.parent_run_id,
                         "params": params[i:i + _MAX_PER_BATCH]})
        tracker._log_files({"spec.yaml": _yaml(spec_dict)}, artifact_path=None)
        return tracker

    @property
    def settings(self) -> TrackingSettings:
        """What workers need (picklable); ``.for_run(run_id)`` per trial."""
        return TrackingSettings(tracking_uri=self.sink.uri, experiment_id=self.experiment_id,
                                parent_run_id=self.parent_run_id,
                                spool_dir=str(self.sink.spool_dir),
                                layer_every=self.layer_every, plots=self.plots)

    def settings_for(self, run_id: str) -> TrackingSettings:
        """The settings of one trial whose run ``create_trial_run`` made (``task.tracking``)."""
        return self.settings.for_run(run_id, self._run_names.get(run_id))

    def ui_url(self, base_url: str | None = None) -> str:
        """Where to look: the study's trials in the UI's "Model training" mode
        (:mod:`sweeps.tracking._view`). ``base_url``: the UI's address when the store is a
        database or a folder."""
        uri = self.sink.uri
        if base_url is None and uri.startswith(("http://", "https://")):
            base_url = uri
        if base_url is not None:
            return study_url(base_url, self.experiment_id)
        return (f"run `stabsweep ui` (an MLflow UI on {redact(uri)}), then open "
                + study_url("http://127.0.0.1:5000", self.experiment_id))

    # ------------------------------------------------------------------ trials
    def create_trial_run(self, trial_number: int, params: Mapping[str, Any],
                         attempt: int = 1) -> str:
        """Create trial ``trial_number``'s run before dispatch; its id (maybe a placeholder
        ``offline-...`` when the store is down: the worker logs under it all the same)."""
        name = f"trial-{trial_number}" if attempt <= 1 else f"trial-{trial_number}-retry" \
                                                             f"{attempt - 1}"
        tags = {names.TAG_PARENT: self.parent_run_id, names.TAG_KIND: "trial",
                names.TAG_STUDY: self.study_name, names.TAG_TRIAL: str(trial_number),
                names.TAG_ATTEMPT: str(attempt), names.TAG_STATE: "running"}
        run_id = self.sink.create_run(self.experiment_id, name, tags)
        self._run_names[run_id] = name
        self._trial_runs[trial_number] = run_id
        flat = sorted(flatten(params).items())
        for i in range(0, len(flat), _MAX_PER_BATCH):
            self.sink.submit({"op": "log_batch", "run": run_id,
                              "params": flat[i:i + _MAX_PER_BATCH]})
        self._sync_now_and_then()
        return run_id

    def close_trial_run(self, run_id: str, outcome: str, reason: str,
                        steps: int | None = None) -> None:
        """End a run whose worker could not (worker lost, interrupted): FAILED or KILLED, with
        the steps the study records for it."""
        tags = [[names.TAG_STATE, outcome], [names.TAG_EXPLODED, "false"],
                [names.TAG_REASON, reason[:5000] or outcome]]
        if steps is not None:
            tags.append([names.TAG_STEPS_RUN, str(int(steps))])
        self.sink.submit({"op": "log_batch", "run": run_id, "tags": tags})
        status = Outcome(outcome).look.mlflow_status
        self.sink.submit({"op": "status", "run": run_id, "status": status,
                          "end_time": int(time.time() * 1000)})
        self._sync_now_and_then()

    def reconcile(self, expected: Mapping[str, tuple[str, int | None, str]],
                  live: Iterable[str] | None = None) -> int:
        """Make trial runs say what the study says: ``expected`` maps a run id to the outcome,
        steps and reason the study (the source of truth) records. A run whose state, status
        or steps differ (a worker that trained on after Ctrl-C, an end that never landed) is
        corrected. With ``live`` (the runs of trials still running: another driver's), a trial
        run of this study left RUNNING that is neither (its driver stopped between creating it
        and recording it on the trial) ends KILLED, interrupted. The number corrected. Call it
        once every spool has landed (:meth:`sync`)."""
        from mlflow.entities import RunTag

        spool = self.sink.spool_dir
        wanted = {resolve_placeholder(spool, run_id): want for run_id, want in expected.items()}
        wanted.pop(None, None)  # created while the store was down, not uploaded yet
        alive = None if live is None else {resolve_placeholder(spool, r) for r in live}
        orphan = (Outcome.INTERRUPTED, None, "the driver stopped while it started this trial; "
                  "the trial runs again on resume")
        client = self.sink.client
        runs, token = {}, None
        while wanted or alive is not None:
            page = client.search_runs([self.experiment_id], f"tags.`{names.TAG_KIND}` = 'trial'",
                                      max_results=1000, page_token=token)
            runs.update({run.info.run_id: run for run in page if run.info.run_id in wanted or (
                alive is not None and run.info.status == "RUNNING" and run.info.run_id not in
                alive and run.data.tags.get(names.TAG_PARENT) == self.parent_run_id)})
            token = page.token
            if not token:
                break
        fixed = 0
        for run_id, run in runs.items():
            outcome, steps, reason = wanted.get(run_id, orphan)
            ended = Outcome(outcome)
            have = run.data.tags
            tags = {}
            if have.get(names.TAG_STATE) != ended:
                exploded = str(ended is Outcome.EXPLODED).lower()
                tags.update({names.TAG_STATE: str(ended), names.TAG_EXPLODED: exploded,
                             names.TAG_REASON: reason[:5000] or str(ended),
                             names.TAG_RUN_COLOR: ended.look.color})
            if steps is not None and have.get(names.TAG_STEPS_RUN) != str(steps):
                tags[names.TAG_STEPS_RUN] = str(steps)
            if tags:
                client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            if run.info.status != ended.look.mlflow_status:
                client.set_terminated(run_id, ended.look.mlflow_status)
            fixed += bool(tags) or run.info.status != ended.look.mlflow_status
        return fixed

    def orphan_command(self) -> list[str]:
        """A command that ends the study's run KILLED if the driver dies without closing it
        (``kill -9``): the driver's watchdog runs it (see ``sweeps.driver._reaper``)."""
        code = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from sweeps.tracking._sync import end_orphaned_run; "
                "end_orphaned_run(*sys.argv[2:])")
        root = str(Path(__file__).resolve().parents[2])
        return [sys.executable, "-c", code, root, self.sink.uri, str(self.sink.spool_dir),
                self.parent_run_id]

    # ------------------------------------------------------------------ the end
    def finish_study(self, files: Mapping[str, str | Path], summary: Mapping[str, Any]
                     ) -> SyncReport:
        """Attach the report files (``{artifact name: path}``, under ``report/``), log the
        summary (numbers as metrics, the rest as ``stabsweep.summary.<key>`` tags), end the
        study's run FINISHED and upload what any process of the sweep spooled."""
        metrics, tags = [], []
        now = int(time.time() * 1000)
        for key, value in summary.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.append([metric_key(str(key)), float(value), now, 0])
            else:
                tags.append([f"stabsweep.summary.{metric_key(str(key))}", str(value)[:5000]])
        for i in range(0, max(len(metrics), len(tags)), _MAX_PER_BATCH):
            self.sink.submit({"op": "log_batch", "run": self.parent_run_id,
                              "metrics": metrics[i:i + _MAX_PER_BATCH],
                              "tags": tags[i:i + _MAX_PER_BATCH]})
        missing = [f"{name}: {path}" for name, path in files.items() if not Path(path).is_file()]
        if missing:
            warnings.warn(f"report files not found, not logged: {missing}", RuntimeWarning,
                          stacklevel=2)
        self._log_files({name: Path(path) for name, path in files.items()
                         if Path(path).is_file()}, artifact_path="report")
        report = self.close("FINISHED")  # every trial's spool has landed (store up)
        self._link_best(files)
        return report

    def close(self, status: str = "KILLED") -> SyncReport:
        """End the study's run (``KILLED`` on Ctrl-C) and upload what was spooled."""
        self.sink.submit({"op": "status", "run": self.parent_run_id, "status": status,
                          "end_time": int(time.time() * 1000)})
        return self.sync(prune=True)

    def sync(self, prune: bool = False) -> SyncReport:
        """Upload every process's spool (this host's spool_dir) if the store is reachable."""
        files = spool_files(self.sink.spool_dir)
        if not files:
            return SyncReport()
        if not self.sink.reachable():
            return SyncReport(files=len(files), pending=sum(
                len(Spool.open_existing(path).pending()) for path in files))
        self.sink.drain(force=True)
        return sync_spool(self.sink.spool_dir, self.sink.uri, prune=prune)

    def _sync_now_and_then(self) -> None:
        from sweeps.tracking._uploader import uploader_running

        if time.monotonic() >= self._next_sync and not uploader_running(self.sink.spool_dir):
            self._next_sync = time.monotonic() + _SYNC_EVERY_S
            self.sync(prune=False)

    def _set_view(self, spec: Mapping[str, Any]) -> None:
        """Tag the experiment with the shared view the printed URL opens (and a description
        with that URL, for someone who opens the experiment from the list)."""
        space = spec.get("space")
        space = space if isinstance(space, Mapping) else {}
        state = view_state(self.study_name, *self.objective, [str(k) for k in space])
        try:
            client = self.sink.client
            client.set_experiment_tag(self.experiment_id,
                                      f"mlflow.sharedViewState.{names.VIEW_KEY}",
                                      json.dumps(state))
            client.set_experiment_tag(
                self.experiment_id, names.TAG_NOTE,
                f"stabsweep study `{self.study_name}`: open its trials with the URL `stabsweep "
                "ui` prints (Model training mode, shared view `stabsweep`). Exploded trials "
                "are named `trial-<n> [exploded @<step>]`, end Killed and have a red dot.")
        except Exception as exc:  # the view is a convenience: never fail a sweep over it
            warnings.warn(f"could not set the study's MLflow view: {exc}", RuntimeWarning,
                          stacklevel=3)

    def _link_best(self, files: Mapping[str, Any]) -> None:
        """Link the study's run to its best trial's run (description and a tag)."""
        metric, direction = self.objective
        try:
            client = self.sink.client
            found = [run for outcome in (Outcome.COMPLETE, Outcome.RESCUED)
                     for run in client.search_runs(
                         [self.experiment_id],
                         f"tags.`{names.TAG_KIND}` = 'trial' and tags.`{names.TAG_STATE}` = "
                         f"'{outcome}' and tags.`{names.TAG_PARENT}` = '{self.parent_run_id}'",
                         order_by=[f"metrics.`{metric}` "
                                   f"{'ASC' if direction == 'minimize' else 'DESC'}"],
                         max_results=1)]
            found = [r for r in found if isinstance(r.data.metrics.get(metric), float)] or found
            if not found:
                return
            sign = 1.0 if direction == "minimize" else -1.0
            best = min(found, key=lambda r: sign * r.data.metrics.get(metric, sign * math.inf))
            value = best.data.metrics.get(metric)
            shown = f"{value:.6g}" if isinstance(value, float) else "n/a"
            url = f"#/experiments/{self.experiment_id}/runs/{best.info.run_id}"
            note = client.get_run(self.parent_run_id).data.tags.get(names.TAG_NOTE, "")
            report = ("report/report.html" if "report.html" in files else
                      "report/report.md" if "report.md" in files else None)
            lines = [f"**Best trial**: [{best.info.run_name}]({url}), `{metric}` = {shown}."]
            if report:
                lines.append(f"Report: `{report}` (Artifacts tab).")
            client.set_tag(self.parent_run_id, names.TAG_BEST_RUN, best.info.run_id)
            client.set_tag(self.parent_run_id, names.TAG_NOTE,
                           ("\n\n".join([*lines, note]) if note else "\n\n".join(lines))[:5000])
            if not best.info.run_name.endswith("[best]"):
                client.set_tag(best.info.run_id, "mlflow.runName",
                               f"{best.info.run_name} [best]")
        except Exception as exc:  # a convenience: the study itself is complete
            warnings.warn(f"could not link the study's best trial in MLflow: {exc}",
                          RuntimeWarning, stacklevel=3)

    def _log_files(self, files: Mapping[str, str | Path], artifact_path: str | None) -> None:
        if not files:
            return
        with tempfile.TemporaryDirectory(prefix="stabsweep-report-") as tmp:
            for name, content in files.items():
                target = Path(tmp) / name
                if isinstance(content, Path):
                    shutil.copy2(content, target)
                else:
                    target.write_text(content)
            self.sink.submit({"op": "artifacts", "run": self.parent_run_id, "local": tmp,
                              "artifact_path": artifact_path})


def _objective(spec: Mapping[str, Any]) -> tuple[str, str]:
    objective = spec.get("objective")
    objective = objective if isinstance(objective, Mapping) else {}
    metric = str(objective.get("metric") or "eval_loss")
    direction = str(objective.get("direction") or "minimize").lower()
    return metric, "maximize" if direction.startswith("max") else "minimize"


def _yaml(data: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False)
