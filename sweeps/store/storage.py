"""The Optuna storage: the study's source of truth, and how workers reach it.

* Embedded default: ``sqlite:///<workdir>/stabsweep.db``. SQLite is not for parallel writers
  (Optuna's FAQ: "database is locked"), so the driver is its only user: when workers need the
  study (an Optuna pruner asks ``should_prune`` mid-trial), the driver serves the storage over
  Optuna's gRPC storage proxy and workers connect to that. No shared filesystem is needed.
* ``--storage postgresql://...`` (or mysql): workers connect to the database directly, and
  several drivers (hosts) may share one study. No file lock can guard it, so the driver records
  an Optuna heartbeat for each trial it runs (``record_heartbeat``, every ``HEARTBEAT_S``); a
  trial whose heartbeat is older than ``GRACE_S`` (its driver died) is closed and retried by any
  driver of the study, at start and while it runs, the role ``RetryFailedTrialCallback`` has in
  ``optimize()``. Trials of a live driver elsewhere are left alone.

A study file is held by one driver at a time (an advisory lock next to the database), so a
second ``stabsweep run`` of the same study fails clearly instead of closing the first one's
trials as interrupted.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow_setup.uri import redact

HEARTBEAT_S = max(1, int(os.environ.get("STABSWEEP_HEARTBEAT_S", "10")))
"""Seconds between a driver's heartbeats for its running trials (server storages only)."""
GRACE_S = 3 * HEARTBEAT_S
"""A running trial with no heartbeat for this long belongs to a dead driver."""


class StorageError(RuntimeError):
    """The study storage cannot be opened or is in use."""


def default_storage_url(workdir: str | Path = ".") -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'stabsweep.db'}"


def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///"):])


def _busy_message(db: Path, owner: str) -> str:
    return (f"{db} is in use by a running sweep ({owner}); wait for it to finish, stop it "
            "with Ctrl-C, or use another storage file.")


def check_not_busy(url: str | None = None, *, workdir: str | Path = ".") -> None:
    """Raise :class:`StorageError` at once if another driver holds the study file's lock.

    Creates nothing (no lock file, no database): the sweep calls it before the seconds its
    preflight takes, and :class:`StudyStorage` takes the lock for real afterwards."""
    path = sqlite_path(url or default_storage_url(workdir))
    if path is None:
        return
    lock_path = path.with_name(path.name + ".lock")
    try:
        handle = open(lock_path)  # noqa: SIM115 - closed below
    except OSError:
        return  # no lock file: no driver has held this study file
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(_busy_message(path, handle.read().strip() or "another process")
                               ) from None
        fcntl.flock(handle, fcntl.LOCK_UN)


class StudyStorage:
    """Opens the storage for the driver and, when asked, serves it to the workers.

    Args:
        url: an SQLAlchemy URL; None for the embedded default in ``workdir``.
        serve_host: where the gRPC proxy listens (SQLite only): 127.0.0.1 unless the user
            names a host for workers on other machines.
    """

    def __init__(self, url: str | None = None, *, workdir: str | Path = ".",
                 serve_host: str = "127.0.0.1") -> None:
        self.url = url or default_storage_url(workdir)
        self.display_url = redact(self.url)
        self.serve_host = serve_host
        self._lock_file: Any = None
        self._server: Any = None
        self.proxy_address: tuple[str, int] | None = None
        path = sqlite_path(self.url)
        if path is not None:
            if not path.parent.is_dir():
                raise StorageError(f"storage {self.display_url}: folder {path.parent} does not "
                                   "exist; create it or give another path.")
            self._lock(path)
        self.backend = self._open_backend()

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def shared(self) -> bool:
        """A database server: other drivers may run this study now (no lock guards it)."""
        return not self.is_sqlite

    def heartbeat(self, trial_ids: list[int]) -> None:
        """Tell the study these trials' driver is alive (server storages only)."""
        if self.shared:
            for trial_id in trial_ids:
                self.backend.record_heartbeat(trial_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """RUNNING trials whose driver stopped beating (server storages only)."""
        if not self.shared:
            return []
        return list(self.backend._get_stale_trial_ids(study_id))

    def _open_backend(self) -> Any:
        import optuna

        kwargs: dict[str, Any] = {}
        beat: dict[str, Any] = {}
        if self.is_sqlite:
            # One writer (this process), but the proxy thread and the driver may overlap.
            kwargs = {"connect_args": {"timeout": 60}}
        else:  # a server: connections dropped by a restart are replaced, not failed
            kwargs = {"pool_pre_ping": True}
            beat = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S}
            # The driver beats for its ask/tell trials itself (see the module docstring).
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
            warnings.filterwarnings("ignore", message=".*heartbeat_interval.* experimental")
        for attempt in range(_OPEN_ATTEMPTS):
            try:
                rdb = optuna.storages.RDBStorage(self.url, engine_kwargs=kwargs, **beat)
                break
            except Exception as exc:  # SQLAlchemy errors vary by backend
                if attempt + 1 < _OPEN_ATTEMPTS and _created_concurrently(exc):
                    # Another process (`stabsweep status`, a second driver being refused)
                    # created the schema at the same moment: the tables exist now.
                    time.sleep(0.2 * (attempt + 1))
                    continue
                self.close()
                raise StorageError(
                    f"storage {self.display_url}: cannot open the study storage "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0]}).") from None
        if self.is_sqlite:
            _fast_sqlite(rdb.engine)
        return optuna.storages.get_storage(rdb)

    def _lock(self, db: Path) -> None:
        lock_path = db.with_name(db.name + ".lock")
        handle = open(lock_path, "a+")  # noqa: SIM115 - held for the driver's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise StorageError(_busy_message(db, owner)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._lock_file = handle

    def worker_storage(self) -> Any:
        """What a worker needs to reach the study: a URL, or a picklable gRPC proxy client."""
        if not self.is_sqlite:
            return self.url
        if self.proxy_address is None:
            self._serve()
        from optuna.storages import GrpcStorageProxy

        assert self.proxy_address is not None
        host, port = self.proxy_address
        return GrpcStorageProxy(host=host, port=port)

    def _serve(self) -> None:
        from optuna.storages._grpc.server import make_server

        port = _free_port(self.serve_host)
        self._server = make_server(self.backend, self.serve_host, port,
                                   ThreadPoolExecutor(max_workers=4))
        self._server.start()
        connect = "127.0.0.1" if self.serve_host in ("0.0.0.0", "") else self.serve_host
        if self.serve_host in ("0.0.0.0", "::"):
            connect = socket.gethostbyname(socket.gethostname())
        self.proxy_address = (connect, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.stop(grace=2).wait()
            self._server = None
        if self._lock_file is not None:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            finally:
                self._lock_file.close()
                self._lock_file = None

    def __enter__(self) -> StudyStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host if host not in ("", "0.0.0.0") else "0.0.0.0", 0))
        return int(sock.getsockname()[1])


def _fast_sqlite(engine: Any) -> None:
    """WAL journal + synchronous=NORMAL: one fsync per checkpoint instead of several per
    commit. The driver commits ~15 times per trial; this halves its storage time. Safe for one
    writer process (the driver and its proxy thread); a power cut may lose the last commits,
    never corrupt the file."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    engine.dispose()  # connections opened while creating the tables lack the pragmas


_OPEN_ATTEMPTS = 4


def _created_concurrently(exc: BaseException) -> bool:
    """An error of creating the schema while another process creates it too (Optuna's
    RDBStorage creates the tables and the alembic version row on first open)."""
    text = str(exc)
    return (type(exc).__name__ == "IntegrityError" and "alembic_version" in text) or (
        type(exc).__name__ == "OperationalError" and "already exists" in text)
