"""The pidfile that lets ``python -m mlflow_setup stop`` find a detached server.

``<workdir>/.mlflow-server.pid`` is JSON: pid, pgid, host, port, url, the
backend store URI with its credentials redacted, artifacts dir, log path and
start time. Before signalling a group read from it, ``stop`` checks (through
/proc, where there is one) that the group still runs MLflow, so a stale file
whose pid was reused never kills an unrelated process.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from mlflow_setup.procgroup import group_alive, group_members
from mlflow_setup.server import TrackingServer

__all__ = ["PIDFILE_NAME", "pidfile_path", "running_server", "stop_detached", "write_pidfile"]

PIDFILE_NAME = ".mlflow-server.pid"
_FIELDS = ("pid", "pgid", "host", "port", "url")


def pidfile_path(workdir: str | Path = ".") -> Path:
    """``<workdir>/.mlflow-server.pid``, ``workdir`` made absolute."""
    return Path(workdir).expanduser().resolve() / PIDFILE_NAME


def write_pidfile(server: TrackingServer, workdir: str | Path = ".") -> Path:
    """Record ``server`` in the workdir's pidfile (atomically) and return the file's path."""
    path = pidfile_path(workdir)
    record: dict[str, Any] = {
        "pid": server.pid,
        "pgid": server.pgid,
        "host": server.host,
        "port": server.port,
        "url": server.url,
        "backend_store_uri": server.backend_store_uri,  # already redacted
        "artifacts_dir": str(server.artifacts_dir) if server.artifacts_dir else None,
        "log_path": str(server.log_path) if server.log_path else None,
        "started_at": time.time(),
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def running_server(workdir: str | Path = ".") -> TrackingServer | None:
    """The server recorded in the workdir's pidfile if it still runs, else None.

    A pidfile whose server is gone (or whose pid now belongs to another
    program) is stale and is removed.
    """
    path = pidfile_path(workdir)
    record = _read(path)
    if record is None:
        return None
    pgid = int(record["pgid"])
    if not group_alive(pgid) or not _runs_mlflow(pgid):
        path.unlink(missing_ok=True)
        return None
    return TrackingServer(
        url=str(record["url"]),
        host=str(record["host"]),
        port=int(record["port"]),
        pid=int(record["pid"]),
        pgid=pgid,
        backend_store_uri=str(record.get("backend_store_uri") or ""),
        artifacts_dir=Path(record["artifacts_dir"]) if record.get("artifacts_dir") else None,
        log_path=Path(record["log_path"]) if record.get("log_path") else None,
    )


def stop_detached(workdir: str | Path = ".", timeout: float = 10.0) -> TrackingServer | None:
    """Stop the server recorded in the workdir's pidfile; None if none was running.

    The pidfile is removed either way.
    """
    server = running_server(workdir)
    if server is not None:
        server.stop(timeout=timeout)
    pidfile_path(workdir).unlink(missing_ok=True)
    return server


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        path.unlink(missing_ok=True)  # unreadable: nothing can be trusted in it
        return None
    if not isinstance(record, dict) or any(key not in record for key in _FIELDS):
        path.unlink(missing_ok=True)
        return None
    return record


def _runs_mlflow(pgid: int) -> bool:
    members = group_members(pgid)
    if members is None:  # no /proc: trust the file
        return True
    for pid, state in members:
        if state == "Z":
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"mlflow" in cmdline:
            return True
    return False
