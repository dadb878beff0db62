"""MLflow plumbing for stabsweep: resolve the tracking URI, run a local tracking server.

``resolve_tracking_uri`` gives the one absolute URI every process of a sweep
(driver and Ray workers) must log to. ``start_server`` runs ``mlflow server``
with a SQLite backend and served artifacts as one process group; the CLI
``python -m mlflow_setup start|stop|uri`` wraps both. ``README.md`` covers a
team server (PostgreSQL + MinIO/S3) and Ray clusters.
"""

from __future__ import annotations

from mlflow_setup.pidfile import PIDFILE_NAME, running_server, stop_detached, write_pidfile
from mlflow_setup.procgroup import group_alive, stop_process_group
from mlflow_setup.server import (
    ServerStartError,
    TrackingServer,
    find_free_port,
    start_server,
)
from mlflow_setup.uri import (
    absolute_uri,
    artifact_root_for,
    default_tracking_uri,
    is_local_store,
    redact,
    resolve_tracking_uri,
)

__all__ = [
    "PIDFILE_NAME",
    "ServerStartError",
    "TrackingServer",
    "absolute_uri",
    "artifact_root_for",
    "default_tracking_uri",
    "find_free_port",
    "group_alive",
    "is_local_store",
    "redact",
    "resolve_tracking_uri",
    "running_server",
    "start_server",
    "stop_detached",
    "stop_process_group",
    "write_pidfile",
]
