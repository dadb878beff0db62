"""Live progress of a sweep and its closing summary table (rich)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sweeps.common import Outcome
from sweeps.driver import (
    AlreadyDone,
    StorageServed,
    SweepEvent,
    SweepStarted,
    SweepSummary,
    SweepWarning,
    TrialEnded,
    TrialRecovered,
)


class SweepDisplay:
    """Draws the runner's events: a line per finished trial, a live bar on a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.finished = self.failed = 0
        self.ended: dict[Outcome, int] = {}
        self.best: float | None = None
        self.progress: Progress | None = None
        self.task_id: Any = None
        self.started = time.perf_counter()

    def __call__(self, event: SweepEvent) -> None:
        match event:
            case SweepStarted():
                self._start(event)
            case StorageServed(host=host, port=port):
                self._say(f"serving the study storage to workers on {host}:{port} "
                          "(gRPC storage proxy)")
            case TrialRecovered(trial=number):
                self._say(f"trial {number} was left running by a stopped sweep: closed as "
                          "FAIL (interrupted), its params will be retried")
            case AlreadyDone(finished=finished, n_trials=n_trials):
                self._say(f"the study already has {finished} finished trials (n_trials "
                          f"{n_trials}); raise n_trials to run more")
            case SweepWarning(message=message):
                self.console.print(f"[yellow]warning:[/] {message}", highlight=False)
            case TrialEnded():
                self._trial(event)

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def _start(self, event: SweepStarted) -> None:
        self.finished = event.finished
        self._say(f"study [bold]{event.study}[/]: {event.finished}/{event.n_trials} finished, "
                  f"{_plural(event.workers, 'worker')}, storage {event.storage}")
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=True)
            self.progress.start()
            self.task_id = self.progress.add_task(
                "trials", total=event.n_trials, completed=event.finished,
                status=self._status())

    def _trial(self, event: TrialEnded) -> None:
        outcome = event.outcome
        self.finished += outcome.finished
        self.failed += outcome.failed
        self.ended[outcome] = self.ended.get(outcome, 0) + 1
        self.best = event.best
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in event.params.items())
        value = (f" value {event.value:.4g}"
                 if event.value is not None and outcome.completed else "")
        skipped = f", {_plural(event.skipped, 'update')} skipped" if event.skipped else ""
        line = (f"trial {event.trial:>3} [{outcome.look.style}]{outcome:<9}[/]{value} "
                f"({event.steps_run} steps{skipped}, {event.wall_time_s:.1f} s) {params}")
        if not outcome.completed:  # a rescued trial's cost is its skipped count, shown
            line += f"\n            {event.reason}"
        self.console.print(line, highlight=False, soft_wrap=True)
        if self.progress is not None:
            self.progress.update(self.task_id, completed=self.finished, status=self._status())

    def _status(self) -> str:
        best = "-" if self.best is None else f"{self.best:.4g}"
        return (f"exploded {self.ended.get(Outcome.EXPLODED, 0)}  "
                f"pruned {self.ended.get(Outcome.SLOW, 0)}  failed {self.failed}  best {best}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def summary_rows(summary: SweepSummary) -> list[tuple[str, str]]:
    """The closing numbers, (label, value) per line. The finished count adds up: outcomes
    that do not count towards n_trials (interrupted, lost, failed) are listed apart."""
    finished = {k: v for k, v in summary.counts.items() if Outcome(k).finished}
    others = {k: v for k, v in summary.counts.items() if not Outcome(k).finished}
    trials = f"{summary.n_trials} finished"
    if finished:
        trials += f" ({', '.join(f'{k} {v}' for k, v in sorted(finished.items()))})"
    if others:
        trials += f"; not counted: {', '.join(f'{k} {v}' for k, v in sorted(others.items()))}"
    rows = [("trials", trials)]
    rescued = summary.count(Outcome.RESCUED)
    if rescued:
        rows.append(("rescued", f"{rescued} trial{'s' if rescued != 1 else ''} trained on to the "
                                f"end after {summary.rescued_skipped} skipped "
                                f"update{'s' if summary.rescued_skipped != 1 else ''}"))
    if summary.best:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in summary.best["params"].items())
        rows += [("best", f"trial {summary.best['number']}: {summary.best['value']:.5g}"),
                 ("best params", params)]
    else:
        rows.append(("best", "no completed stable trial yet"))
    if summary.steps_budget:
        rows.append(("compute", f"{summary.steps_run} of {summary.steps_budget} steps run "
                                f"({summary.steps_saved:.0%} saved by pruning)"))
    rows += [("wall time", f"{summary.wall_time_s:.1f} s"), ("storage", summary.storage)]
    if summary.mlflow_url:
        rows.append(("MLflow", summary.mlflow_url))
    return rows


def summary_table(summary: SweepSummary) -> Table:
    """The closing numbers as a table, for a terminal."""
    table = Table(title=f"study {summary.study}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for label, value in summary_rows(summary):
        table.add_row(label, value)
    return table


def summary_text(summary: SweepSummary) -> str:
    """The closing numbers as plain lines (output that is not a terminal: a log, a pipe)."""
    return "\n".join(f" {label:<11} {value}" for label, value in summary_rows(summary))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
