"""``python -m mlflow_setup start|stop|uri``: a local MLflow tracking server.

Each command is a thin wrapper over a function of this package. ``app`` can be
mounted in another typer CLI (``main_app.add_typer(app, name="mlflow")``).
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from pathlib import Path
from types import FrameType
from typing import Annotated, NoReturn

import typer

from mlflow_setup.pidfile import running_server, stop_detached, write_pidfile
from mlflow_setup.server import ServerStartError, TrackingServer, start_server
from mlflow_setup.uri import TRACKING_URI_ENV, redact, resolve_tracking_uri

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Run a local MLflow tracking server for stabsweep, and resolve the tracking URI.",
)

WorkdirOption = Annotated[
    Path,
    typer.Option(help="Directory of the server's mlflow.db, mlartifacts/, log and pidfile."),
]


@app.command()
def start(
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one.")] = 5000,
    host: Annotated[
        str, typer.Option(help="Interface to bind; anything but loopback exposes the server.")
    ] = "127.0.0.1",
    workdir: WorkdirOption = Path("."),
    detach: Annotated[
        bool, typer.Option(help="Return once the server is up; stop it later with `stop`.")
    ] = False,
    workers: Annotated[int, typer.Option(help="uvicorn workers (1 suits SQLite).")] = 1,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            help="Host headers to accept (comma list, wildcards); replaces MLflow's default "
            "of localhost + private IPs, so keep localhost:*,127.0.0.1:* in it."
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for /health.")] = 60.0,
    backend: Annotated[
        str | None,
        typer.Option(
            help="Backend store URI, e.g. postgresql://user:pass@db:5432/mlflow (default: "
            "sqlite:///<workdir>/mlflow.db); given to the server in its environment, never "
            "printed unredacted. Defaults to $MLFLOW_BACKEND_STORE_URI when set."
        ),
    ] = None,
) -> None:
    """Start the server; runs in the foreground until Ctrl-C unless --detach."""
    existing = running_server(workdir)
    if existing is not None:
        _fail(
            f"an MLflow server for workdir {workdir.resolve()} already runs at {existing.url} "
            f"(pid {existing.pid}). Use it, or stop it first with "
            f"`python -m mlflow_setup stop --workdir {workdir}`."
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            server = start_server(
                port=port,
                host=host,
                workdir=workdir,
                workers=workers,
                timeout=timeout,
                allowed_hosts=allowed_hosts,
                backend_store_uri=backend or os.environ.get("MLFLOW_BACKEND_STORE_URI") or None,
            )
        except (ServerStartError, ValueError) as error:
            _fail(str(error))
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    pidfile = write_pidfile(server, workdir)
    _print_banner(server)
    if detach:
        server.detach()
        typer.echo(f"Running in the background. Stop it with: python -m mlflow_setup stop "
                   f"--workdir {workdir}")  # fmt: skip
        return
    _run_foreground(server, pidfile)


@app.command()
def stop(
    workdir: WorkdirOption = Path("."),
    timeout: Annotated[float, typer.Option(help="Seconds before SIGKILL.")] = 10.0,
) -> None:
    """Stop the server recorded in <workdir>/.mlflow-server.pid (from `start --detach`)."""
    server = stop_detached(workdir, timeout=timeout)
    if server is None:
        typer.echo(f"No MLflow server is running for workdir {workdir.resolve()}.")
        return
    typer.echo(f"Stopped the MLflow server at {server.url} (process group {server.pgid}).")


@app.command()
def uri(
    tracking_uri: Annotated[
        str | None, typer.Option("--tracking-uri", help="Explicit URI; wins over the env.")
    ] = None,
    workdir: WorkdirOption = Path("."),
) -> None:
    """Print the tracking URI a sweep would use (flag > $MLFLOW_TRACKING_URI > local SQLite)."""
    try:
        resolved = resolve_tracking_uri(tracking_uri, workdir)
    except ValueError as error:
        _fail(str(error))
    typer.echo(redact(resolved))
    server = running_server(workdir)
    if server is not None and resolved != server.url:
        typer.echo(
            f"note: a tracking server for this workdir runs at {server.url}; to log through "
            f"it: export {TRACKING_URI_ENV}={server.url}",
            err=True,
        )


def _print_banner(server: TrackingServer) -> None:
    typer.echo(f"MLflow tracking server: {server.url}  (up in {server.startup_s:.1f} s, "
               f"process group {server.pgid})")  # fmt: skip
    typer.echo(f"UI (model training view): {server.ui_url()}")
    typer.echo(f"backend: {server.backend_store_uri}")
    typer.echo(f"artifacts: {server.artifacts_dir}   log: {server.log_path}")
    typer.echo(f"export {TRACKING_URI_ENV}={server.url}")


def _run_foreground(server: TrackingServer, pidfile: Path) -> None:
    def _interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # The server runs in its own session: a terminal's Ctrl-C or hang-up reaches
    # only this process, which must pass the stop on.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    typer.echo("Press Ctrl-C to stop.")
    code = 0
    try:
        while server.alive():
            time.sleep(0.5)
        typer.echo(f"The MLflow server exited on its own; see {server.log_path}.", err=True)
        code = 1
    except KeyboardInterrupt:
        typer.echo("Stopping the MLflow server...")
    finally:
        server.stop()
        pidfile.unlink(missing_ok=True)
    raise typer.Exit(code)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def main() -> None:
    app(prog_name="python -m mlflow_setup")


if __name__ == "__main__":
    main()
