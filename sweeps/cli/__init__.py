"""The ``stabsweep`` command: thin typer wrappers over the library. ``_app`` holds what every
command shares (the app, consoles, one-line errors), ``_commands`` the sweep commands (run,
status, report, export, train, workloads), ``_servers`` the ones that talk to a server (run
--detach, logs, stop, ui, sync); ``progress`` draws the driver's events live and ``service``
submits a sweep to a Ray cluster as a Ray Job. ``python -m sweeps.cli`` runs it too."""

from __future__ import annotations

from sweeps.cli._commands import app, main

__all__ = ["app", "main"]
