"""``stabsweep`` commands that talk to a server: a sweep detached to a Ray cluster (``run
--detach``, ``logs``, ``stop``) and the MLflow UI and store (``ui``, ``sync``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sweeps.cli._app import console, err_console, fail, fail_sweep
from sweeps.driver import RunOptions


def submit_detached(spec_path: Path, study: str, options: RunOptions) -> None:
    from mlflow_setup.uri import redact
    from sweeps.cli.service import ServiceError, submit_sweep

    try:
        job_id = submit_sweep(spec_path, options, study)
    except ServiceError as exc:
        fail_sweep(exc)
    address = options.ray_address
    console.print(f"submitted job {job_id} (study {study})", highlight=False)
    where = f" --ray-address {address}" if address else ""
    console.print(f"follow: stabsweep logs {job_id} --follow{where}\n"
                  f"status: stabsweep status {study} --storage {redact(str(options.storage))}\n"
                  f"stop:   stabsweep stop {job_id}{where}", highlight=False)


JobAddress = Annotated[str | None, typer.Option(
    "--ray-address", envvar="RAY_API_SERVER_ADDRESS",
    help="The Ray dashboard (Jobs API), default http://127.0.0.1:8265.")]


def logs(
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="Job id from run --detach.")],
    ray_address: JobAddress = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow until it ends.")
                      ] = False,
) -> None:
    """Print a detached sweep's output (its driver's, on the cluster)."""
    from sweeps.cli.service import ServiceError
    from sweeps.cli.service import logs as job_logs

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        status = job_logs(job_id, ray_address, follow, write)
    except ServiceError as exc:
        fail(str(exc))
    if follow:
        err_console.print(f"job {job_id}: {status}", highlight=False)
        if status != "SUCCEEDED":
            raise typer.Exit(1)


def stop(
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="Job id from run --detach.")],
    ray_address: JobAddress = None,
) -> None:
    """Stop a detached sweep: its running trials end as interrupted; submit the spec again
    to resume the study."""
    from sweeps.cli.service import ServiceError
    from sweeps.cli.service import stop as stop_job

    try:
        status = stop_job(job_id, ray_address)
    except ServiceError as exc:
        fail(str(exc))
    console.print(f"job {job_id}: {status}; running trials were closed as interrupted and are "
                  "retried when the spec is submitted again.", highlight=False)


def ui(
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
) -> None:
    """Start the MLflow UI on the sweep's store (127.0.0.1) and print its URL."""
    import signal
    import threading

    from mlflow_setup import ServerStartError, resolve_tracking_uri, start_server

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        console.print("the tracking store is a server already.", highlight=False)
        print_study_urls(uri, uri, console)
        return
    # Installed before the server starts, so a SIGTERM during start-up still stops it.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server = start_server(port=port, host=host, backend_store_uri=uri)
    except ServerStartError as exc:
        fail(str(exc))
    print_study_urls(uri, server.url, console)
    console.print("(Ctrl-C to stop)", highlight=False)
    try:
        while not stop.wait(1.0) and server.alive():
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def print_study_urls(uri: str, base_url: str, out: Console) -> None:
    """One URL per study (newest first): its trials in the UI's Model training mode."""
    try:
        from sweeps.tracking import study_urls

        urls = study_urls(uri, base_url)
    except Exception as exc:  # the UI still serves; say why there is no study link
        urls = []
        out.print(f"(could not list the studies: {type(exc).__name__}: {exc})",
                  highlight=False)
    if not urls:
        out.print(f"MLflow UI: {base_url.rstrip('/')}/#/experiments?workflowType="
                  "machine_learning (no stabsweep study in this store yet)", highlight=False)
        return
    out.print(f"MLflow UI on {base_url}; open a study's trials:", highlight=False)
    for name, url in urls:
        out.print(f"  {name}: {url}", highlight=False, soft_wrap=True)


def sync(
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    spool: Annotated[Path, typer.Option(help="Spool folder.")] = Path(".stabsweep/spool"),
) -> None:
    """Upload what a sweep spooled while the tracking server was down."""
    from mlflow_setup import resolve_tracking_uri
    from sweeps.tracking import sync_spool

    result = sync_spool(spool, resolve_tracking_uri(tracking_uri))
    console.print(str(result), highlight=False)
