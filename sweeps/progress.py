"""Live progress of a sweep and its closing summary table (rich)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sweeps import keys

_STYLE = {keys.COMPLETE: "green", keys.EXPLODED: "red", keys.SLOW: "yellow",
          keys.FAILED: "magenta", keys.WORKER_LOST: "magenta", keys.INTERRUPTED: "magenta"}


class SweepDisplay:
    """Consumes the runner's events: a line per finished trial, a live bar on a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.counts = {"finished": 0, keys.EXPLODED: 0, keys.SLOW: 0, "failed": 0}
        self.best: float | None = None
        self.progress: Progress | None = None
        self.task_id: Any = None
        self.started = time.perf_counter()

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(data)

    def _on_start(self, data: dict[str, Any]) -> None:
        self.counts["finished"] = data["finished"]
        self.console.print(
            f"study [bold]{data['study']}[/]: {data['finished']}/{data['n_trials']} finished, "
            f"{_plural(data['workers'], 'worker')}, storage {data['storage']}", highlight=False)
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=True)
            self.progress.start()
            self.task_id = self.progress.add_task(
                "trials", total=data["n_trials"], completed=data["finished"],
                status=self._status())

    def _on_proxy(self, data: dict[str, Any]) -> None:
        self.console.print(f"serving the study storage to workers on "
                           f"{data['host']}:{data['port']} (gRPC storage proxy)", highlight=False)

    def _on_recovered(self, data: dict[str, Any]) -> None:
        self.console.print(f"trial {data['trial']} was left running by a stopped sweep: "
                           "closed as FAIL (interrupted), its params will be retried",
                           highlight=False)

    def _on_already_done(self, data: dict[str, Any]) -> None:
        self.console.print(f"the study already has {data['finished']} finished trials "
                           f"(n_trials {data['n_trials']}); raise --n-trials to run more",
                           highlight=False)

    def _on_warning(self, data: dict[str, Any]) -> None:
        self.console.print(f"[yellow]warning:[/] {data['message']}", highlight=False)

    def _on_trial(self, data: dict[str, Any]) -> None:
        outcome = data["outcome"]
        if outcome in (keys.COMPLETE, keys.EXPLODED, keys.SLOW):
            self.counts["finished"] += 1
        if outcome in (keys.EXPLODED, keys.SLOW):
            self.counts[outcome] += 1
        if outcome in (keys.FAILED, keys.WORKER_LOST, keys.INTERRUPTED):
            self.counts["failed"] += 1
        self.best = data.get("best")
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in data["params"].items())
        value = "" if data["value"] is None or outcome != keys.COMPLETE else \
            f" value {data['value']:.4g}"
        style = _STYLE.get(outcome, "white")
        line = (f"trial {data['trial']:>3} [{style}]{outcome:<9}[/]{value} "
                f"({data['steps_run']} steps, {data['wall_time_s']:.1f} s) {params}")
        if outcome != keys.COMPLETE:
            line += f"\n            {data['reason']}"
        self.console.print(line, highlight=False, soft_wrap=True)
        if self.progress is not None:
            self.progress.update(self.task_id, completed=self.counts["finished"],
                                 status=self._status())

    def _status(self) -> str:
        best = "-" if self.best is None else f"{self.best:.4g}"
        return (f"exploded {self.counts[keys.EXPLODED]}  pruned {self.counts[keys.SLOW]}  "
                f"failed {self.counts['failed']}  best {best}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def summary_table(summary: Any) -> Table:
    table = Table(title=f"study {summary.study}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items()))
    table.add_row("trials", f"{summary.n_trials} finished ({counts})")
    if summary.best:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in summary.best["params"].items())
        table.add_row("best", f"trial {summary.best['number']}: {summary.best['value']:.5g}")
        table.add_row("best params", params)
    else:
        table.add_row("best", "no completed stable trial yet")
    if summary.steps_budget:
        table.add_row("compute", f"{summary.steps_run} of {summary.steps_budget} steps run "
                                 f"({summary.steps_saved:.0%} saved by pruning)")
    table.add_row("wall time", f"{summary.wall_time_s:.1f} s")
    table.add_row("storage", summary.storage)
    if summary.mlflow_url:
        table.add_row("MLflow", summary.mlflow_url)
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
