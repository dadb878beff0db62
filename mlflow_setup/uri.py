"""Where runs go: resolve the MLflow tracking URI once, as an absolute URI.

A Ray worker runs in another working directory (often a temporary one), so a
relative store such as MLflow's default ``sqlite:///mlflow.db`` would give each
worker its own database. The driver therefore resolves the URI here, turns
local paths into absolute ones and hands that exact string to every worker.

Facts from MLflow 3.17 (``mlflow/store/tracking/__init__.py``,
``mlflow/tracking/_tracking_service/utils.py``): the default tracking URI is
``sqlite:///mlflow.db`` relative to the current directory (``./mlruns`` only
when a legacy file store with data already exists there), and the file store
refuses to open unless ``MLFLOW_ALLOW_FILE_STORE=true``.

Nothing here imports mlflow: resolving a URI must stay cheap.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode
from urllib.request import pathname2url, url2pathname

__all__ = [
    "DB_FILENAME",
    "TRACKING_URI_ENV",
    "absolute_uri",
    "artifact_root_for",
    "default_tracking_uri",
    "is_local_store",
    "redact",
    "resolve_tracking_uri",
    "sqlite_uri",
]

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
ALLOW_FILE_STORE_ENV = "MLFLOW_ALLOW_FILE_STORE"
DB_FILENAME = "mlflow.db"
# MLflow's default artifact root for a SQL store without a server ("./mlruns").
_LOCAL_ARTIFACT_DIRNAME = "mlruns"

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_SECRET_QUERY_KEYS = re.compile(
    r"pass|pwd|secret|token|key|sig|credential|auth", flags=re.IGNORECASE
)
_MASK = "***"
# Tracking URIs MLflow accepts without "://" that are not paths.
_BARE_SCHEMES = ("databricks", "databricks-uc", "uc")


def sqlite_uri(path: str | Path) -> str:
    """``sqlite:///`` URI of ``path`` made absolute (percent-encoded like MLflow does)."""
    return "sqlite:///" + pathname2url(os.path.abspath(os.fspath(path)))


def default_tracking_uri(workdir: str | Path | None = None) -> str:
    """MLflow's default local store (``sqlite:///mlflow.db``), absolute, in ``workdir``."""
    base = Path.cwd() if workdir is None else Path(workdir)
    return sqlite_uri(base / DB_FILENAME)


def resolve_tracking_uri(flag: str | None = None, workdir: str | Path | None = None) -> str:
    """The tracking URI every process of a sweep must use, as an absolute URI.

    Order: the ``--tracking-uri`` flag, else ``$MLFLOW_TRACKING_URI``, else
    ``sqlite:///<workdir>/mlflow.db`` (MLflow's default store, placed in
    ``workdir``, the current directory when None). Relative local paths in the
    flag or the variable are made absolute against the current directory, the
    way MLflow itself would read them in this process. Empty strings count as
    unset, as in MLflow.

    Raises:
        ValueError: the URI names a file store (``./mlruns``, ``file:...``) and
            ``MLFLOW_ALLOW_FILE_STORE`` is not true: MLflow 3.17 refuses to open it.
    """
    if flag:
        uri, source = flag, "--tracking-uri"
    elif os.environ.get(TRACKING_URI_ENV):
        uri, source = os.environ[TRACKING_URI_ENV], f"${TRACKING_URI_ENV}"
    else:
        return default_tracking_uri(workdir)
    uri = absolute_uri(uri.strip())
    if _is_file_store(uri) and not _env_true(ALLOW_FILE_STORE_ENV):
        raise ValueError(
            f"{source} names the MLflow file store {redact(uri)!r}, which MLflow 3.17 refuses "
            f"to open unless {ALLOW_FILE_STORE_ENV}=true. Use a database instead "
            f"(e.g. {default_tracking_uri(workdir)!r}) or a tracking server URL, migrate old "
            f"runs with `mlflow migrate-filestore`, or set {ALLOW_FILE_STORE_ENV}=true."
        )
    return uri


def is_local_store(uri: str) -> bool:
    """True when ``uri`` is a store on this machine's disk (SQLite file or file store).

    A local store is shared by workers only when they run on this host; a Ray
    cluster with several nodes needs a tracking server (``http(s)://``) or a
    database server instead.
    """
    scheme = _scheme(uri)
    if scheme == "sqlite":
        return not _is_sqlite_memory(uri)
    return scheme in (None, "file")


def artifact_root_for(uri: str) -> str | None:
    """Artifact root to give new experiments when logging straight into ``uri``.

    For a SQLite store MLflow puts artifacts under ``./mlruns`` of whichever
    process creates the experiment; this returns ``file://<db dir>/mlruns``
    instead, so that the location does not depend on a worker's cwd. Pass
    ``f"{root}/{name}"`` as ``artifact_location`` to ``create_experiment``.
    None when the store decides itself: a file store keeps artifacts in its own
    tree, and a tracking server (``--serve-artifacts``) or a remote database
    uses the server's configured root.
    """
    if _scheme(uri) != "sqlite" or _is_sqlite_memory(uri):
        return None
    db_path = Path(url2pathname(_sqlite_path(absolute_uri(uri))))
    return "file://" + pathname2url(str(db_path.parent / _LOCAL_ARTIFACT_DIRNAME))


def redact(uri: str) -> str:
    """``uri`` safe to print or log: passwords, tokens and keys replaced by ``***``.

    ``postgresql://mlflow:s3cret@db:5432/mlflow`` -> ``postgresql://mlflow:***@db:5432/mlflow``.
    A user part with no password (``https://<token>@host``) may itself be a
    token and is hidden whole. Query parameters whose name looks like a secret
    (password, token, key, signature, ...) are masked too.
    """
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#]*)(.*)$", uri, flags=re.DOTALL)
    if match is None:
        return uri
    prefix, netloc, rest = match.groups()
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:{_MASK}@{hostport}" if sep else f"{_MASK}@{hostport}"
    path, qmark, query = rest.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        pairs = [
            (key, _MASK if _SECRET_QUERY_KEYS.search(key) else value)
            for key, value in parse_qsl(query, keep_blank_values=True)
        ]
        rest = f"{path}?{urlencode(pairs, safe='*')}{hash_}{fragment}"
    return f"{prefix}{netloc}{rest}"


def _scheme(uri: str) -> str | None:
    if uri in _BARE_SCHEMES:
        return uri
    match = _SCHEME_RE.match(uri)
    # "C:\\..." is a Windows drive, not a scheme.
    if match is None or len(match.group(1)) == 1:
        return None
    return match.group(1).lower().split("+", 1)[0]


def _is_file_store(uri: str) -> bool:
    return _scheme(uri) in (None, "file")


def _is_sqlite_memory(uri: str) -> bool:
    return _sqlite_path(uri) in ("", ":memory:")


def _sqlite_path(uri: str) -> str:
    # sqlite:///relative.db, sqlite:////abs.db, sqlite:// (memory); drop ?options.
    return uri.split(":", 1)[1].removeprefix("//").removeprefix("/").split("?", 1)[0]


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative local path (SQLite file, file store, bare path) made absolute."""
    scheme = _scheme(uri)
    if scheme is None:
        return "file://" + pathname2url(os.path.abspath(os.path.expanduser(uri)))
    if scheme == "file" and not uri.startswith(("file:///", "file://localhost/")):
        # file:relative/dir or file:./mlruns
        return "file://" + pathname2url(os.path.abspath(uri[len("file:") :]))
    if scheme == "sqlite" and not _is_sqlite_memory(uri):
        head, _, tail = uri.partition(":///")
        path, qmark, options = tail.partition("?")
        if not path.startswith("/"):
            path = pathname2url(os.path.abspath(url2pathname(path)))
            return f"{head}:///{path}{qmark}{options}"
    return uri


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("true", "1")
