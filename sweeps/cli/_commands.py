"""The ``stabsweep`` command line: thin typer wrappers over library functions.

The commands that talk to a server (Ray Jobs, the MLflow UI) live in :mod:`sweeps.cli._servers`
and are registered below in the order ``--help`` lists them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sweeps.cli import _servers as servers
from sweeps.cli._app import (
    StorageOpt,
    app,
    console,
    err_console,
    fail,
    fail_sweep,
    load_study_or_exit,
    spec_message,
)

__all__ = ["app", "main"]


@app.command()
def run(
    ctx: typer.Context,
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
    from sweeps.cli.progress import SweepDisplay, summary_table, summary_text
    from sweeps.common import OptionError, SweepError, SweepInterrupted
    from sweeps.driver import RunOptions, run_sweep
    from sweeps.spec import SpecError, load_spec

    try:
        spec = load_spec(spec_path)
        options = RunOptions(n_trials=n_trials, workers=workers, ray_address=ray_address,
                             storage=storage, study=study, tracking_uri=tracking_uri,
                             tracking=not no_tracking, cpus_per_trial=cpus_per_trial,
                             gpus_per_trial=gpus_per_trial, seed=seed, max_retries=max_retries,
                             storage_host=storage_host)
    except SpecError as exc:
        fail(spec_message(exc))
    except OptionError as exc:
        fail_sweep(exc)
    if detach:
        servers.submit_detached(spec_path, spec.study if study is None else study, options)
        return
    if storage_host != "127.0.0.1":
        err_console.print(f"note: the storage proxy will listen on {storage_host}, reachable "
                          "from other machines on that network.")
    display = SweepDisplay(console)
    try:
        summary = run_sweep(spec, options, on_event=display)
    except SpecError as exc:
        display.close()
        fail(spec_message(exc))
    except SweepInterrupted as exc:
        display.close()
        err_console.print(f"{exc}. Resume with: {_same_command(ctx, spec_path)}", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(130) from None
    except SweepError as exc:
        display.close()
        fail_sweep(exc)
    display.close()
    if console.is_terminal:
        console.print(summary_table(summary))
    else:  # a log or a pipe: plain lines, not a box
        console.print(summary_text(summary), highlight=False, markup=False, soft_wrap=True)
    name = summary.study
    console.print(f"next: stabsweep status {name} | stabsweep report {name} | "
                  f"stabsweep export {name} -o best.yaml", highlight=False)


def _same_command(ctx: typer.Context, spec_path: Path) -> str:
    """``stabsweep run`` as the user gave it (every flag they set), to resume with."""
    import shlex

    words = ["stabsweep", "run", str(spec_path)]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if param.param_type_name != "option" or value == param.default or value is None:
            continue
        if getattr(param, "is_flag", False):
            words.append(param.opts[0])
        else:
            words += [param.opts[0], str(value)]
    return shlex.join(words)


@app.command()
def status(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Each trial: state, why, params, value, steps run."""
    from sweeps.results import render_status, study_status

    data = study_status(load_study_or_exit(study, storage))
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
    from sweeps.results import write_report

    loaded = load_study_or_exit(study, storage)
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
    from sweeps.results import ExportError, export_best

    if top < 1 or confirm_seeds < 0:
        fail("--top must be >= 1 and --confirm-seeds >= 0.")
    loaded = load_study_or_exit(study, storage)
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
    seed: Annotated[int | None, typer.Option(
        help="Seed of the workload and the model (default: an export's sweep seed, else 0).")
    ] = None,
    threads: Annotated[int | None, typer.Option(
        help="torch threads (default: what an exported trial ran with, so its numbers come "
        "out the same; else torch's default).")] = None,
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
    from sweeps.common import OptionError
    from sweeps.results import training_plan

    try:
        plan = training_plan(config, workload=workload, steps=steps,
                             workload_args=_parse_args(arg or []))
        if threads is not None and threads < 1:
            raise OptionError("threads", f"must be >= 1; got {threads}.")
        if (threads or plan.threads) is not None:
            import torch

            torch.set_num_threads(threads or plan.threads or 1)
        result = run_training(plan.workload, plan.config, steps=plan.steps,
                              seed=plan.seed if seed is None else seed, device=device,
                              eval_every=eval_every, workload_args=plan.workload_args)
    except OptionError as exc:
        fail_sweep(exc)
    except ConfigError as exc:
        fail(f"{config}: {exc}")
    except WorkloadError as exc:
        from sweeps.driver import missing_factory

        fail(missing_factory(workload or plan.workload, str(exc)) or str(exc))
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


app.command()(servers.logs)
app.command()(servers.stop)
app.command()(servers.ui)
app.command()(servers.sync)


def main() -> None:
    app()

