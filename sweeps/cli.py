"""The ``stabsweep`` command line: thin typer wrappers over library functions."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import optuna

    from sweeps.options import RunOptions

app = typer.Typer(
    name="stabsweep",
    no_args_is_help=True,
    add_completion=False,
    help="Sweeps and diagnostics for PyTorch training stability.",
)
# Piped output (CI logs, `| less`) gets a wide page instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


@app.callback()
def _root() -> None:
    """Put the working directory on the import path, as ``python -m`` does (a console script
    does not), so a spec's ``mymodule:factory`` next to it is found by the driver; the Ray
    workers inherit the driver's path (sweeps.workers.init_ray)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def fail(message: str, code: int = 2) -> NoReturn:
    """One-line error on stderr and a non-zero exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


StorageOpt = Annotated[str | None, typer.Option(
    "--storage", help="Optuna storage URL (default: sqlite:///./stabsweep.db).")]


@app.command()
def run(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Sweep spec YAML.")],
    n_trials: Annotated[int | None, typer.Option(help="Finished trials to reach.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Concurrent trials (default: as many as fit the CPUs/GPUs).")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="Join this Ray cluster (e.g. auto or ray://head:10001).")] = None,
    storage: StorageOpt = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: the spec's).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")] = None,
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="Do not log to MLflow.")
                           ] = False,
    cpus_per_trial: Annotated[float, typer.Option(help="CPUs per trial (torch threads).")] = 1.0,
    gpus_per_trial: Annotated[float, typer.Option(help="GPUs per trial; fractions allowed.")
                              ] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Override the spec's seed.")] = None,
    max_retries: Annotated[int, typer.Option(help="Retries of a trial whose worker died.")] = 2,
    storage_host: Annotated[str, typer.Option(
        help="Host the storage proxy binds to for remote workers (SQLite storage only).")
    ] = "127.0.0.1",
    detach: Annotated[bool, typer.Option(
        "--detach", help="Submit the sweep to the Ray cluster as a Ray Job (--ray-address "
        "http://<head>:8265), print the job id and return; see `stabsweep logs/stop`.")
    ] = False,
) -> None:
    """Run (or resume) a stability sweep."""
    from sweeps.progress import SweepDisplay, summary_table
    from sweeps.runner import OptionError, RunOptions, SweepError, SweepInterrupted, run_sweep
    from sweeps.spec import SpecError, load_spec

    try:
        spec = load_spec(spec_path)
        options = RunOptions(n_trials=n_trials, workers=workers, ray_address=ray_address,
                             storage=storage, study=study, tracking_uri=tracking_uri,
                             tracking=not no_tracking, cpus_per_trial=cpus_per_trial,
                             gpus_per_trial=gpus_per_trial, seed=seed, max_retries=max_retries,
                             storage_host=storage_host)
    except SpecError as exc:
        fail(_spec_message(exc))
    except OptionError as exc:
        fail_sweep(exc)
    if detach:
        _submit(spec_path, spec.study if study is None else study, options)
        return
    if storage_host != "127.0.0.1":
        err_console.print(f"note: the storage proxy will listen on {storage_host}, reachable "
                          "from other machines on that network.")
    display = SweepDisplay(console)
    try:
        summary = run_sweep(spec, options, on_event=display)
    except SpecError as exc:
        display.close()
        fail(_spec_message(exc))
    except SweepInterrupted as exc:
        display.close()
        err_console.print(f"{exc}. Resume with: stabsweep run {spec_path}"
                          + (f" --study {study}" if study else ""), highlight=False)
        raise typer.Exit(130) from None
    except SweepError as exc:
        display.close()
        fail_sweep(exc)
    display.close()
    console.print(summary_table(summary))
    name = summary.study
    console.print(f"next: stabsweep status {name} | stabsweep report {name} | "
                  f"stabsweep export {name} -o best.yaml", highlight=False)


_FLAG_HINT = {"study": "--study NEW_NAME starts a new study",
              "tracking": "--no-tracking runs without MLflow",
              "storage": "--storage URL chooses the storage",
              "workers": "see --workers, --cpus-per-trial, --gpus-per-trial"}
"""What to type, for a library error that names the option which would fix it."""


def fail_sweep(exc: Exception) -> NoReturn:
    """A library error in the CLI's words: an OptionError names its flag (``--n-trials must be
    >= 1``); another error naming its option gets the flag that changes it as a hint."""
    from sweeps.errors import OptionError

    option = getattr(exc, "option", None)
    if isinstance(exc, OptionError):
        fail(f"--{str(exc.option).replace('_', '-')} {exc.message}")
    hint = _FLAG_HINT.get(option or "")
    fail(f"{exc} ({hint})" if hint else str(exc))


def _submit(spec_path: Path, study: str, options: RunOptions) -> None:
    from mlflow_setup.uri import redact
    from sweeps.service import ServiceError, submit_sweep

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


@app.command()
def logs(
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="Job id from run --detach.")],
    ray_address: JobAddress = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow until it ends.")
                      ] = False,
) -> None:
    """Print a detached sweep's output (its driver's, on the cluster)."""
    from sweeps.service import ServiceError
    from sweeps.service import logs as job_logs

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


@app.command()
def stop(
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="Job id from run --detach.")],
    ray_address: JobAddress = None,
) -> None:
    """Stop a detached sweep: its running trials end as interrupted; submit the spec again
    to resume the study."""
    from sweeps.service import ServiceError
    from sweeps.service import stop as stop_job

    try:
        status = stop_job(job_id, ray_address)
    except ServiceError as exc:
        fail(str(exc))
    console.print(f"job {job_id}: {status}; running trials were closed as interrupted and are "
                  "retried when the spec is submitted again.", highlight=False)


def _spec_message(exc: Exception) -> str:
    source = getattr(exc, "source", None)
    where = getattr(exc, "path", None)
    if source and source != where:
        return f"{source}: {exc}"
    return str(exc)


def _load_study(name: str, storage: str | None) -> optuna.Study:
    from sweeps.studies import StudyNotFound, load_study

    try:
        return load_study(name, storage)
    except StudyNotFound as exc:
        fail_sweep(exc)


@app.command()
def status(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Each trial: state, why, params, value, steps run."""
    from sweeps.report import render_status, study_status

    data = study_status(_load_study(study, storage))
    if as_json:
        print(json.dumps(data, default=str))
    else:
        render_status(data, console)


@app.command()
def report(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = None,
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default: stabsweep-out/STUDY).")] = None,
) -> None:
    """Explosion rate by parameter, stability map, importances, diagnoses."""
    from sweeps.report import write_report

    loaded = _load_study(study, storage)
    paths = write_report(loaded, out or Path("stabsweep-out") / study)
    console.print(Path(paths.report_md).read_text(), highlight=False, markup=False)
    console.print(f"report written to {Path(paths.report_md).parent}/", highlight=False)


@app.command()
def export(
    study: Annotated[str, typer.Argument(help="Study name.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="YAML file to write.")
                      ] = Path("best.yaml"),
    storage: StorageOpt = None,
    top: Annotated[int, typer.Option(help="Candidates to confirm.")] = 1,
    confirm_seeds: Annotated[int, typer.Option(
        help="Re-run the top N on K new seeds; keep one with no explosion.")] = 0,
) -> None:
    """Export the best stable config (optionally confirmed on new seeds)."""
    from stability.workloads import WorkloadError
    from sweeps.export import ExportError, export_best

    if top < 1 or confirm_seeds < 0:
        fail("--top must be >= 1 and --confirm-seeds >= 0.")
    loaded = _load_study(study, storage)
    try:
        export_best(loaded, output, top=top, confirm_seeds=confirm_seeds,
                    say=lambda line: console.print(line, highlight=False))
    except ExportError as exc:
        fail(str(exc), code=1)
    except WorkloadError as exc:  # the confirmation runs cannot build the study's workload
        fail(f"study {study!r}: {exc}")
    console.print("apply it in your loop:\n"
                  f"    guard = StabilityGuard.from_yaml({str(output)!r}, model)\n"
                  "    if guard.step(loss): break   # replaces backward / clip / step",
                  highlight=False)


@app.command()
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
        _print_study_urls(uri, uri)
        return
    # Installed before the server starts, so a SIGTERM during start-up still stops it.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server = start_server(port=port, host=host, backend_store_uri=uri)
    except ServerStartError as exc:
        fail(str(exc))
    _print_study_urls(uri, server.url)
    console.print("(Ctrl-C to stop)", highlight=False)
    try:
        while not stop.wait(1.0) and server.alive():
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _print_study_urls(uri: str, base_url: str) -> None:
    """One URL per study (newest first): its trials in the UI's Model training mode."""
    try:
        from sweeps.tracking import study_urls

        urls = study_urls(uri, base_url)
    except Exception as exc:  # the UI still serves; say why there is no study link
        urls = []
        console.print(f"(could not list the studies: {type(exc).__name__}: {exc})",
                      highlight=False)
    if not urls:
        console.print(f"MLflow UI: {base_url.rstrip('/')}/#/experiments?workflowType="
                      "machine_learning (no stabsweep study in this store yet)",
                      highlight=False)
        return
    console.print(f"MLflow UI on {base_url}; open a study's trials:", highlight=False)
    for name, url in urls:
        console.print(f"  {name}: {url}", highlight=False, soft_wrap=True)


@app.command()
def sync(
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    spool: Annotated[Path, typer.Option(help="Spool folder.")] = Path(".stabsweep/spool"),
) -> None:
    """Upload what a sweep spooled while the tracking server was down."""
    from mlflow_setup import resolve_tracking_uri
    from sweeps.tracking import sync_spool

    result = sync_spool(spool, resolve_tracking_uri(tracking_uri))
    console.print(str(result), highlight=False)


@app.command()
def workloads() -> None:
    """List the built-in workloads and their arguments."""
    from stability.workloads import describe_workloads

    table = Table(title="built-in workloads (or give package.module:factory)")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("arguments")
    for item in describe_workloads():
        args = ", ".join(f"{k}={v!r}" for k, v in item["arguments"].items())
        table.add_row(item["name"], item["description"], args)
    console.print(table)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="StabilityConfig YAML/JSON (e.g. an export).")],
    workload: Annotated[str | None, typer.Option(
        "--workload", "-w", help="Built-in name or package.module:factory "
        "(default: the workload an exported file names, with its arguments).")] = None,
    steps: Annotated[int | None, typer.Option(
        help="Optimizer steps (default: the export's, else 300).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the workload and the model.")] = 0,
    arg: Annotated[list[str] | None, typer.Option(
        "--arg", help="Workload argument as key=value (YAML value), repeatable.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate every N steps.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    out: Annotated[Path | None, typer.Option(
        help="Folder for trace.parquet, diagnosis.json and the plots.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a workload under a config and print the diagnosis."""
    from stability.config import ConfigError
    from stability.trainer import train as run_training
    from stability.workloads import WorkloadError
    from sweeps.errors import OptionError
    from sweeps.export import training_plan

    try:
        plan = training_plan(config, workload=workload, steps=steps,
                             workload_args=_parse_args(arg or []))
        result = run_training(plan.workload, plan.config, steps=plan.steps, seed=seed,
                              device=device, eval_every=eval_every,
                              workload_args=plan.workload_args)
    except OptionError as exc:
        fail_sweep(exc)
    except (ConfigError, WorkloadError) as exc:
        fail(f"{config}: {exc}" if isinstance(exc, ConfigError) else str(exc))
    if out is not None:
        result.save(out)
    if as_json:
        print(json.dumps({"steps_run": result.steps_run, "exploded": result.exploded,
                          "final_eval": result.final_eval,
                          "diagnosis": result.diagnosis.to_dict()}, default=str))
    else:
        console.print(f"[bold]{result.workload}[/] {result.steps_run} steps in "
                      f"{result.wall_time_s:.1f} s; final eval: "
                      + ", ".join(f"{k}={v:.4g}" for k, v in result.final_eval.items()))
        console.print(result.diagnosis.summary(), highlight=False)
        if out is not None:
            console.print(f"trace, diagnosis and plots in {out}/")
    raise typer.Exit(1 if result.exploded else 0)


def _parse_args(items: list[str]) -> dict[str, object]:
    import yaml

    parsed: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--arg {item!r}: expected key=value, e.g. --arg seq_len=100")
        parsed[key] = yaml.safe_load(value)
    return parsed


def main() -> None:
    app()


if __name__ == "__main__":
    main()
