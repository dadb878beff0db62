"""Where a study lives: the Optuna storage (the study's source of truth, served to workers,
heartbeats), and opening, resuming, finding and closing the trials of a study in it."""

from __future__ import annotations

from sweeps.store.storage import (
    GRACE_S,
    HEARTBEAT_S,
    StorageError,
    StudyStorage,
    check_not_busy,
    default_storage_url,
    sqlite_path,
)
from sweeps.store.studies import (
    FINISHED,
    StudyNotFound,
    finished_count,
    load_study,
    open_study,
    recover_stale,
    retry,
)

__all__ = [
    "FINISHED",
    "GRACE_S",
    "HEARTBEAT_S",
    "StorageError",
    "StudyNotFound",
    "StudyStorage",
    "check_not_busy",
    "default_storage_url",
    "finished_count",
    "load_study",
    "open_study",
    "recover_stale",
    "retry",
    "sqlite_path",
]
