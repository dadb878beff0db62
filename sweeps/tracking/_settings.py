"""What every process of a sweep needs to log to MLflow, and the names it logs under.

``TrackingSettings`` is plain, picklable data: the driver builds it once
(:meth:`StudyTracker.settings`) and hands a copy per trial to the workers
(:meth:`TrackingSettings.for_run`). It holds no secret beyond the tracking URI the
user gave; nothing here imports mlflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = [
    "DEFAULT_PLOTS",
    "EXPERIMENT_KIND",
    "MIN_LAYER_EVERY",
    "PLOTS",
    "TAG_ATTEMPT",
    "TAG_BEST_RUN",
    "TAG_EXPLODED",
    "TAG_FIRST_LAYER",
    "TAG_KIND",
    "TAG_NONFINITE_STEP",
    "TAG_NOTE",
    "TAG_ONSET_STEP",
    "TAG_PARENT",
    "TAG_PLACEHOLDER",
    "TAG_REASON",
    "TAG_RUN_COLOR",
    "TAG_SKIPPED",
    "TAG_STATE",
    "TAG_STEPS_RUN",
    "TAG_STUDY",
    "TAG_TRIAL",
    "TAG_VERDICT",
    "TAG_VERDICT_KIND",
    "TAG_WORKER",
    "VIEW_KEY",
    "TrackingSettings",
    "auto_layer_every",
    "default_spool_dir",
    "quick_http_failures",
]

MIN_LAYER_EVERY = 25
"""Smallest automatic per-layer cadence. The automatic cadence, ``max(25, number of layers)``,
keeps the per-layer values at <= 1 per step: each value costs the SQLite store ~70-100 us
of CPU (benchmarks/tracking_overhead.py), and ``loss`` + ``grad_norm/global`` already send 2
per step."""


def auto_layer_every(n_layers: int) -> int:
    """The per-layer cadence used when ``TrackingSettings.layer_every`` is None."""
    return max(MIN_LAYER_EVERY, int(n_layers))

PLOTS = ("all", "exploded", "none")
DEFAULT_PLOTS = "exploded"
"""Trials that get the two PNG plots. Rendering them costs ~0.3-0.6 s per trial on a CPU,
which is as long as a 300-step deep_mlp trial (benchmarks/tracking_overhead.py); the
trace (trace.parquet) and the MLflow charts are there for every trial."""

# Tags on runs (values are strings, as MLflow stores them).
TAG_PARENT = "mlflow.parentRunId"
TAG_KIND = "stabsweep.kind"             # "study" on the parent run, "trial" on a child
TAG_STUDY = "stabsweep.study"
TAG_TRIAL = "stabsweep.trial"           # Optuna trial number
TAG_ATTEMPT = "stabsweep.attempt"       # 1 for a first run, 2.. for retries
TAG_STATE = "stabsweep.state"           # running, or the trial's Outcome (sweeps.common.outcomes)
TAG_EXPLODED = "stabsweep.exploded"     # "true" / "false"
TAG_REASON = "stabsweep.reason"
TAG_STEPS_RUN = "stabsweep.steps_run"   # optimizer steps run, as the study records them
TAG_SKIPPED = "stabsweep.skipped_updates"  # updates the guard dropped and trained on past
TAG_ONSET_STEP = "stabsweep.onset_step"
TAG_FIRST_LAYER = "stabsweep.first_layer"
TAG_VERDICT_KIND = "stabsweep.verdict_kind"
TAG_VERDICT = "stabsweep.verdict"
TAG_NONFINITE_STEP = "stabsweep.nonfinite_step"  # first step with a NaN/inf loss or gradient
TAG_PLACEHOLDER = "stabsweep.placeholder_id"     # run created from the spool (idempotent replay)
TAG_BEST_RUN = "stabsweep.best_trial_run_id"    # on the study's run: its best trial's run
TAG_RUN_COLOR = "mlflow.runColor"               # the dot next to a run's name in the UI
TAG_NOTE = "mlflow.note.content"                # a run's (or experiment's) description
UPLOAD_MODES = ("background", "inline")
VIEW_KEY = "stabsweep"
"""The experiment's shared view (tag ``mlflow.sharedViewState.stabsweep``), opened by the URL
``?viewStateShareKey=stabsweep``: the study's runs flat (trials visible), best first."""
TAG_WORKER = "stabsweep.worker"                  # host:pid of the process that trained it

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

# Short client-side HTTP limits, so that a tracking server that is down costs a trial seconds,
# not minutes: MLflow 3.17 defaults to 7 retries with backoff factor 2 (~4 min) and a 120 s
# timeout (mlflow/environment_variables.py); these variables are read at every request.
# MLflow also prints two "View run ... at" lines (after one more GET) whenever a run on a
# tracking server ends: two lines per trial in the sweep's console. The CLI prints the URL once.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def quick_http_failures() -> None:
    """Set MLflow's HTTP client variables (above) in this process, unless the user set them.

    Worst case against a host that drops packets: 3 attempts x 20 s, once per process; a
    refused connection fails in about 2 s. What could not be sent is spooled, never lost.
    """
    for name, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def default_spool_dir() -> str:
    """``<cwd>/.stabsweep/spool``, absolute."""
    return str(Path.cwd().resolve() / ".stabsweep" / "spool")


@dataclass(kw_only=True)
class TrackingSettings:
    """Where and how a sweep's processes log; plain, picklable data.

    Attributes:
        tracking_uri: absolute tracking URI (``mlflow_setup.resolve_tracking_uri``).
        experiment_id: the study's MLflow experiment.
        parent_run_id: the study's run; trial runs are nested under it.
        spool_dir: absolute directory where what could not be sent waits for a later upload
            (``stabsweep sync``); on a multi-node cluster each node spools to its own disk.
        layer_every: log ``grad_norm/<layer>`` every this many steps; None (default):
            ``max(25, number of layers)``, at most one per-layer value per step. The
            full-resolution trace is the ``trace.parquet`` artifact.
        plots: which trials get ``grad_norm_trace.png`` and ``layer_heatmap.png``: ``all``,
            ``exploded`` (default: the plots cost as much as a short trial) or ``none``.
        enabled: False turns tracking off (workers log nothing).
        run_id: the trial's run, created by the driver before dispatch (``for_run``); None
            makes the worker create its own child run.
        run_name: that run's name (``trial-3``, ``trial-3-retry1``); the worker marks it
            when the trial explodes (``trial-3 [exploded @41]``).
        upload: ``background`` (default): a worker writes its trial to the spool and this
            host's uploader process sends it, off the trial's critical path; ``inline``: the
            worker sends it itself when the trial finishes (tests). Default from
            ``$STABSWEEP_TRACKING_UPLOAD`` when set.
    """

    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None = None
    spool_dir: str = ""
    layer_every: int | None = None
    plots: str = DEFAULT_PLOTS
    enabled: bool = True
    run_id: str | None = None
    run_name: str | None = None
    upload: str = ""

    def __post_init__(self) -> None:
        if not self.upload:
            self.upload = os.environ.get("STABSWEEP_TRACKING_UPLOAD", "") or "background"
        if self.upload not in UPLOAD_MODES:
            raise ValueError(f"tracking.upload must be one of {', '.join(UPLOAD_MODES)}; got "
                             f"{self.upload!r}.")
        if not isinstance(self.tracking_uri, str) or not self.tracking_uri.strip():
            raise ValueError("tracking.tracking_uri must be a non-empty URI; got "
                             f"{self.tracking_uri!r}. Use mlflow_setup.resolve_tracking_uri().")
        if not self.spool_dir:
            self.spool_dir = default_spool_dir()
        if not os.path.isabs(self.spool_dir):
            raise ValueError(f"tracking.spool_dir must be an absolute path (workers run in other "
                             f"directories); got {self.spool_dir!r}.")
        every = self.layer_every
        if every is not None and (isinstance(every, bool) or not isinstance(every, int)
                                  or every < 1):
            raise ValueError(f"tracking.layer_every must be an integer >= 1 or None (auto); "
                             f"got {every!r}.")
        if self.plots not in PLOTS:
            raise ValueError(f"tracking.plots must be one of {', '.join(PLOTS)}; got "
                             f"{self.plots!r}.")

    def for_run(self, run_id: str, run_name: str | None = None) -> TrackingSettings:
        """A copy for one trial, whose run the driver created (``create_trial_run``)."""
        return replace(self, run_id=run_id, run_name=run_name)
