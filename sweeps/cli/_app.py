"""What every ``stabsweep`` command shares: the typer app, the consoles, and the one-line
error that ends a command (with the CLI's own flag names for a library error)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    import optuna

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
    workers inherit the driver's path (sweeps.worker.pool.init_ray)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def fail(message: str, code: int = 2) -> NoReturn:
    """One-line error on stderr and a non-zero exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


StorageOpt = Annotated[str | None, typer.Option(
    "--storage", help="Optuna storage URL (default: sqlite:///./stabsweep.db).")]


_FLAG_HINT = {"study": "--study NEW_NAME starts a new study",
              "tracking": "--no-tracking runs without MLflow",
              "storage": "--storage URL chooses the storage",
              "workers": "see --workers, --cpus-per-trial, --gpus-per-trial"}
"""What to type, for a library error that names the option which would fix it."""


def fail_sweep(exc: Exception) -> NoReturn:
    """A library error in the CLI's words: an OptionError names its flag (``--n-trials must be
    >= 1``); another error naming its option gets the flag that changes it as a hint."""
    from sweeps.common import OptionError

    option = getattr(exc, "option", None)
    if isinstance(exc, OptionError):
        fail(f"--{str(exc.option).replace('_', '-')} {exc.message}")
    hint = _FLAG_HINT.get(option or "")
    fail(f"{exc} ({hint})" if hint else str(exc))


def spec_message(exc: Exception) -> str:
    source = getattr(exc, "source", None)
    where = getattr(exc, "path", None)
    if source and source != where:
        return f"{source}: {exc}"
    return str(exc)


def load_study_or_exit(name: str, storage: str | None) -> optuna.Study:
    from sweeps.store import StudyNotFound, load_study

    try:
        return load_study(name, storage)
    except StudyNotFound as exc:
        fail_sweep(exc)
