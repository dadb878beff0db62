"""MLflow tracking for sweeps: a run per study, a nested run per trial, batched traces.

Driver::

    tracker = StudyTracker.open(spec.study, spec.to_dict(), resolve_tracking_uri(flag),
                                existing_parent_run_id=study.user_attrs.get(STUDY_MLFLOW_RUN))
    run_id = tracker.create_trial_run(trial.number, params, attempt)   # before dispatch
    task.tracking = tracker.settings.for_run(run_id)
    ...                                        # worker: run_trial -> TrialTracker
    tracker.close_trial_run(run_id, "worker_lost", reason)             # if the worker died
    tracker.finish_study({"summary.csv": path, ...}, {"n_trials": 16, ...})

Worker (``sweeps.worker.objective.run_trial``)::

    tracker = TrialTracker.start(task)        # task.tracking: TrackingSettings
    train(..., on_sync=tracker.on_sync)       # non-blocking: a background thread logs
    tracker.finish(result, outcome)           # tags, eval metrics, artifacts, run status

Nothing here is imported by ``import sweeps.worker.objective``; mlflow is imported on first use.
Metric keys and their cadence: see ``sweeps/tracking/_series.py``. A store that is down:
operations are spooled under ``TrackingSettings.spool_dir`` and uploaded later
(:func:`sync_spool`, ``stabsweep sync``).
"""

from __future__ import annotations

from sweeps.tracking._failures import TrackingUnavailable
from sweeps.tracking._null import NullTracker
from sweeps.tracking._settings import (
    DEFAULT_PLOTS,
    MIN_LAYER_EVERY,
    TAG_EXPLODED,
    TAG_FIRST_LAYER,
    TAG_ONSET_STEP,
    TAG_PARENT,
    TAG_REASON,
    TAG_STATE,
    TAG_VERDICT_KIND,
    TrackingSettings,
    auto_layer_every,
    default_spool_dir,
)
from sweeps.tracking._sink import SinkStats
from sweeps.tracking._study import StudyTracker
from sweeps.tracking._sync import SyncReport, sync_spool
from sweeps.tracking._trial import TrackerStats, TrialTracker
from sweeps.tracking._view import study_url, study_urls

__all__ = [
    "DEFAULT_PLOTS",
    "MIN_LAYER_EVERY",
    "TAG_EXPLODED",
    "TAG_FIRST_LAYER",
    "TAG_ONSET_STEP",
    "TAG_PARENT",
    "TAG_REASON",
    "TAG_STATE",
    "TAG_VERDICT_KIND",
    "NullTracker",
    "SinkStats",
    "StudyTracker",
    "SyncReport",
    "TrackerStats",
    "TrackingSettings",
    "TrackingUnavailable",
    "TrialTracker",
    "auto_layer_every",
    "default_spool_dir",
    "study_url",
    "study_urls",
    "sync_spool",
]
