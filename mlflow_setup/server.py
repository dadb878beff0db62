"""Start and stop a local MLflow tracking server as one process group.

``mlflow server`` is a launcher: it spawns uvicorn (the app) and, unless job
execution is disabled, a job runner with seven huey consumers (about 2 GB of
resident memory for GenAI jobs a training sweep never uses). The launcher is
started in a new session, so its process group holds all of them and
``os.killpg`` stops the lot; SIGTERM first, SIGKILL after a timeout.

POSIX only (process groups). A server outlives the Python process that
started it only after ``TrackingServer.detach()``; otherwise it is stopped at
interpreter exit.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from mlflow_setup.procgroup import group_alive, stop_process_group
from mlflow_setup.uri import DB_FILENAME, absolute_uri, redact, sqlite_uri

__all__ = [
    "ARTIFACTS_DIRNAME",
    "LOG_FILENAME",
    "ServerStartError",
    "TrackingServer",
    "find_free_port",
    "network_warning",
    "start_server",
]

ARTIFACTS_DIRNAME = "mlartifacts"
LOG_FILENAME = "mlflow-server.log"
_POLL_S = 0.2
_LOG_TAIL_LINES = 25


class ServerStartError(RuntimeError):
    """The MLflow server did not come up; the message carries the end of its log."""


@dataclass(eq=False)
class TrackingServer:
    """Handle on a running ``mlflow server`` process group.

    ``url`` is the address for clients on this machine (a wildcard bind such as
    0.0.0.0 is reached through loopback). Use as a context manager, or call
    ``stop()``; stopping twice is harmless.
    """

    url: str
    host: str
    port: int
    pid: int
    pgid: int
    backend_store_uri: str
    artifacts_dir: Path | None
    log_path: Path | None
    startup_s: float = float("nan")
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def alive(self) -> bool:
        """True while the server's process group has a live (non-zombie) member."""
        if self._stopped:
            return False
        if self._proc is not None and self._proc.poll() is not None:
            # The launcher is gone; uvicorn may linger, but the server is not usable.
            return False
        return group_alive(self.pgid)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after ``timeout`` s."""
        atexit.unregister(self.stop)
        if self._stopped:
            return
        stop_process_group(self.pgid, timeout=timeout, proc=self._proc)
        self._stopped = True

    def detach(self) -> None:
        """Let the server outlive this Python process (no stop at interpreter exit)."""
        atexit.unregister(self.stop)

    def ui_url(self, experiment_id: str | None = None) -> str:
        """UI address in "Model training" mode (MLflow 3.17 opens in its GenAI mode)."""
        if experiment_id is None:
            return f"{self.url}/#/experiments?workflowType=machine_learning"
        return f"{self.url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"

    def __enter__(self) -> TrackingServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_server(
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    backend_store_uri: str | None = None,
    artifacts_dir: str | Path | None = None,
    workdir: str | Path = ".",
    workers: int = 1,
    timeout: float = 60.0,
    log_path: Path | None = None,
    allowed_hosts: str | None = None,
    enable_jobs: bool = False,
) -> TrackingServer:
    """Start ``mlflow server`` and return once ``GET /health`` answers 200.

    Args:
        port: TCP port; None or 0 picks a free one.
        host: interface to bind. Anything but loopback makes the server
            reachable from the network (it has no authentication): a warning says so.
        backend_store_uri: where runs are stored; ``sqlite:///<workdir>/mlflow.db`` by
            default. One worker is right for SQLite (a single writer).
        artifacts_dir: artifact store on disk, ``<workdir>/mlartifacts`` by default;
            served by the server (``--serve-artifacts``), so HTTP clients upload
            and download through it and need no storage credentials.
        workdir: directory for the database, artifacts and log; created if missing.
        workers: uvicorn worker processes.
        timeout: seconds to wait for ``/health``.
        log_path: server stdout/stderr, ``<workdir>/mlflow-server.log`` by default (appended).
        allowed_hosts: ``--allowed-hosts``, comma-separated Host headers (fnmatch
            patterns) the server accepts. It REPLACES MLflow's default list (localhost
            and private IPs, any port): keep ``localhost:*,127.0.0.1:*`` in it for local
            clients, e.g. ``"mlflow.internal:*,localhost:*,127.0.0.1:*"``.
        enable_jobs: keep MLflow's job runner (GenAI evaluation jobs, ~2 GB of RAM).

    Raises:
        ServerStartError: the port is taken, or the server exited or did not answer
            within ``timeout`` (the message ends with the server log's last lines).
        ValueError: an argument is out of range.
    """
    if os.name != "posix":
        raise ServerStartError(
            "start_server needs process groups (POSIX); on this system run `mlflow server` "
            "yourself and pass its URL as --tracking-uri."
        )
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535 (0 or None = a free port) but got {port}.")
    if workers < 1:
        raise ValueError(f"workers must be at least 1 but got {workers}.")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive seconds but got {timeout}.")
    workdir = Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    backend = absolute_uri(backend_store_uri or sqlite_uri(workdir / DB_FILENAME))
    artifacts = Path(artifacts_dir or workdir / ARTIFACTS_DIRNAME).expanduser().resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    log = Path(log_path) if log_path is not None else workdir / LOG_FILENAME
    if (warning := network_warning(host, allowed_hosts)) is not None:
        warnings.warn(warning, UserWarning, stacklevel=2)

    auto_port = not port
    for _attempt in range(3 if auto_port else 1):
        chosen = find_free_port(host) if auto_port else int(port or 0)
        if not auto_port:
            _check_port_free(host, chosen)
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--host", host,
            "--port", str(chosen),
            "--artifacts-destination", str(artifacts),
            "--serve-artifacts",
            "--workers", str(workers),
        ]  # fmt: skip
        if allowed_hosts:
            command += ["--allowed-hosts", allowed_hosts]
        try:
            return _launch(command, host, chosen, backend, artifacts, workdir, log, timeout,
                           enable_jobs)  # fmt: skip
        except _PortTaken:
            if not auto_port:
                raise ServerStartError(_port_taken_message(host, chosen)) from None
    raise ServerStartError(
        f"could not find a free port on {host}: three picked ports were taken before the "
        "server could bind them. Pass an explicit port."
    )


def network_warning(host: str, allowed_hosts: str | None = None) -> str | None:
    """The warning to show when ``host`` exposes the server beyond this machine, else None."""
    if _is_loopback(host):
        return None
    hint = (
        f" Only Host headers matching --allowed-hosts ({allowed_hosts}) are served; that "
        "list replaces MLflow's default (localhost and private IPs)."
        if allowed_hosts
        else " MLflow serves only localhost and private-IP Host headers by default: clients "
        "using a host name need --allowed-hosts (allowed_hosts=), which replaces that "
        "default, so list localhost:*,127.0.0.1:* in it too."
    )
    return (
        f"MLflow server bound to {host} is reachable from the network, without "
        "authentication: open its port only inside a trusted network (firewall, security "
        "group, cluster network), or put an authenticating proxy or `mlflow server "
        f"--app-name basic-auth` in front.{hint}"
    )


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (another process may take it later)."""
    family = _family(host)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _PortTaken(Exception):
    pass


def _launch(
    command: list[str],
    host: str,
    port: int,
    backend: str,
    artifacts: Path,
    workdir: Path,
    log: Path,
    timeout: float,
    enable_jobs: bool,
) -> TrackingServer:
    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if enable_jobs else "false"
    # The store URI may hold a database password: the environment keeps it out of `ps`.
    env["MLFLOW_BACKEND_STORE_URI"] = backend
    env["PYTHONUNBUFFERED"] = "1"  # a failure's log tail must hold the last words
    log.parent.mkdir(parents=True, exist_ok=True)
    log_offset = log.stat().st_size if log.exists() else 0
    started = time.perf_counter()
    with open(log, "ab") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: killpg reaches uvicorn & co.
        )
    server = TrackingServer(
        url=f"http://{_client_host(host)}:{port}",
        host=host,
        port=port,
        pid=proc.pid,
        pgid=proc.pid,
        backend_store_uri=redact(backend),
        artifacts_dir=artifacts,
        log_path=log,
        _proc=proc,
    )
    atexit.register(server.stop)
    try:
        _wait_healthy(server, proc, timeout)
    except BaseException as error:
        server.stop(timeout=2.0)
        if isinstance(error, ServerStartError):
            tail = _log_tail(log, log_offset)
            if "address already in use" in tail.lower():
                raise _PortTaken from None
            raise ServerStartError(f"{error}\n--- last lines of {log} ---\n{tail}") from None
        raise
    server.startup_s = time.perf_counter() - started
    return server


def _wait_healthy(server: TrackingServer, proc: subprocess.Popen[bytes], timeout: float) -> None:
    health = f"{server.url}/health"
    # Never route a loopback health check through the user's HTTP proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise ServerStartError(
                f"mlflow server exited with code {code} before {health} answered "
                f"(backend {redact(server.backend_store_uri)}). Fix the cause in the log below."
            )
        try:
            with opener.open(health, timeout=2.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"mlflow server did not answer {health} within timeout={timeout:g} s. "
                "Raise the timeout on a slow or busy machine, or see the log below."
            )
        time.sleep(_POLL_S)


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        # Same option as uvicorn, so a port in TIME_WAIT is not mistaken for a taken one.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            raise ServerStartError(f"{_port_taken_message(host, port)} ({error})") from None


def _port_taken_message(host: str, port: int) -> str:
    return (
        f"port {port} on {host} is already in use, so the MLflow server cannot bind it. "
        "Choose another port (port=None or --port 0 picks a free one), or stop what holds "
        "it (a server started with `python -m mlflow_setup start --detach` stops with "
        "`python -m mlflow_setup stop --workdir <dir>`)."
    )


def _log_tail(log: Path, offset: int) -> str:
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError as error:
        return f"(log unreadable: {error})"
    lines = text.splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(the server wrote nothing)"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _client_host(host: str) -> str:
    bare = host.strip("[]")
    if bare in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bare == "::":
        return "[::1]"
    return f"[{bare}]" if ":" in bare else bare


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
