"""Service mode: a sweep submitted to a Ray cluster as a Ray Job (the Jobs API), followed and
stopped from any shell.

``stabsweep run SPEC --detach --ray-address http://head:8265`` uploads the spec's folder (the
spec and the user's workload module; databases and run outputs left out) as the job's
``working_dir`` and runs ``python -m sweeps.cli run SPEC ...`` on the cluster, where the driver
joins the cluster through the ``RAY_ADDRESS`` Ray gives a job. The study must live where the
cluster's driver and later shells both reach it (``--storage``), and no password may travel in
the job: Ray keeps the entrypoint and runtime_env with the job, and the dashboard shows them.
``ray stop`` of a job sends SIGTERM: the driver closes its running trials as interrupted, and
the next submit of the same spec resumes the study.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

from mlflow_setup.uri import redact
from sweeps.common import SweepError
from sweeps.driver import RunOptions

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
EXCLUDES = ["*.db", "*.db-*", "*.db.lock", "*.lock", "mlruns/", "mlartifacts/", "stabsweep-out/",
            ".venv/", ".git/", "__pycache__/", "*.pyc", "ray_results/"]
"""Left out of the uploaded working_dir: study and tracking stores, outputs, environments."""


class ServiceError(SweepError):
    """The job cannot be submitted, found or followed (``option``: what would fix it)."""


def has_password(uri: str | None) -> bool:
    pattern = r"^[A-Za-z][A-Za-z0-9+.\-]*://[^/@]*:[^/@]*@"
    return bool(uri) and re.match(pattern, uri or "") is not None


def job_args(options: dict[str, Any]) -> list[str]:
    """The `stabsweep run` flags the cluster's driver gets (all but the Ray address)."""
    args: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        args += [flag] if value is True else [flag, str(value)]
    return args


def client(address: str | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    address = address or DEFAULT_ADDRESS
    if not address.startswith(("http://", "https://")):
        raise ServiceError(f"Ray address {address}: service mode talks to the Ray dashboard "
                           "(Jobs API), e.g. http://<head>:8265.")
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, auth errors...
        raise ServiceError(f"cannot reach the Ray Jobs API at {address}: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                           ) from None


def submit_sweep(spec_path: Path, options: RunOptions, study: str) -> str:
    """Submit ``stabsweep run SPEC`` with ``options`` as a Ray Job to the cluster whose
    dashboard is ``options.ray_address``; return the job id.

    Refused (ServiceError) unless the study and the tracking store live where the cluster
    reaches them (the job's folder is temporary), and when a URL holds a password."""
    tracking_uri = options.tracking_uri or (os.environ.get("MLFLOW_TRACKING_URI")
                                            if options.tracking else None)
    if not options.storage:
        raise ServiceError(
            "a detached sweep needs a study storage the cluster reaches (a database server "
            "such as postgresql://user@db/optuna, or an absolute sqlite:////path the head can "
            "write): the job's folder on the cluster is temporary.", option="storage")
    if options.tracking and not tracking_uri:
        raise ServiceError("a detached sweep needs an MLflow server (tracking URI "
                           "http://<server>) or tracking off: the job's folder on the cluster "
                           "is temporary.", option="tracking")
    for name, value in (("storage", options.storage), ("tracking URI", tracking_uri)):
        if has_password(value):
            raise ServiceError(
                f"{name} {redact(str(value))} holds a password, which Ray would keep with the "
                "job (the dashboard shows it). Drop it from the URL and give it to the "
                "cluster's nodes (PGPASSWORD or ~/.pgpass where `ray start` runs).")
    return submit(spec_path, options.ray_address, {
        "n_trials": options.n_trials, "workers": options.workers, "storage": options.storage,
        "study": options.study, "tracking_uri": tracking_uri,
        "no_tracking": not options.tracking, "cpus_per_trial": options.cpus_per_trial,
        "gpus_per_trial": options.gpus_per_trial, "seed": options.seed,
        "max_retries": options.max_retries}, study)


def submit(spec_path: Path, address: str | None, options: dict[str, Any], study: str) -> str:
    """Submit the sweep as a Ray Job; return the job id."""
    spec_path = spec_path.resolve()
    entry = shlex.join(["python", "-m", "sweeps.cli", "run", spec_path.name,
                        *job_args(options)])
    import time

    jobs = client(address)
    deadline = time.monotonic() + 60
    while True:
        try:
            return str(jobs.submit_job(
                entrypoint=entry,
                runtime_env={"working_dir": str(spec_path.parent), "excludes": EXCLUDES,
                             "env_vars": {"RAY_COLOR_PREFIX": "0"}},
                metadata={"stabsweep_study": study, "stabsweep_spec": spec_path.name}))
        except RuntimeError as exc:  # the SDK's HTTP errors
            # A head just started has no job agent for a few seconds ("try again later").
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                time.sleep(2)
                continue
            hint = (" The head's job agent is not up: another Ray on that host may hold its "
                    "port (ray start --dashboard-agent-listen-port <free port>)."
                    if "No available agent" in str(exc) else "")
            raise ServiceError(f"the Ray Jobs API at {address} refused the job: "
                               f"{str(exc).splitlines()[0]}{hint}") from None


def logs(job_id: str, address: str | None, follow: bool, write: Any) -> str:
    """Write the job's logs (following them to the end with ``follow``); return its status."""
    import asyncio

    jobs = client(address)
    try:
        status = jobs.get_job_status(job_id)
    except Exception as exc:
        raise ServiceError(f"no job {job_id!r} at {address or DEFAULT_ADDRESS} "
                           f"({str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not follow:
        write(jobs.get_job_logs(job_id))
        return str(status)

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(tail())
    return str(jobs.get_job_status(job_id))


def stop(job_id: str, address: str | None, timeout: float = 120.0) -> str:
    """Stop the job (SIGTERM to its driver) and wait for it to end; return its status."""
    import time

    jobs = client(address)
    try:
        jobs.stop_job(job_id)
    except Exception as exc:
        raise ServiceError(f"cannot stop job {job_id!r}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    deadline = time.monotonic() + timeout
    status = jobs.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        status = jobs.get_job_status(job_id)
    return str(status)
