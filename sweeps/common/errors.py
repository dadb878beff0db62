"""Why a sweep cannot start or go on.

Messages name what to change in the terms of the library (a :class:`~sweeps.driver.RunOptions`
field, the spec, a server); a front end that has its own names for them (the CLI's flags) finds
the field in ``.option`` instead of parsing the text.
"""

from __future__ import annotations

__all__ = ["OptionError", "SweepError", "SweepInterrupted"]


class SweepError(RuntimeError):
    """The sweep cannot start or go on (bad workload, storage in use, changed search space...).

    ``option`` names the :class:`~sweeps.driver.options.RunOptions` field that would fix it, if one
    would (``study``: another name starts a new study; ``tracking``: run without MLflow).
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.option = option


class OptionError(SweepError, ValueError):
    """A :class:`~sweeps.driver.options.RunOptions` field has a value no sweep can run with.

    ``str()`` is ``"<field> <message>"``, e.g. ``workers must be >= 1; got 0``."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message, option)

    def __str__(self) -> str:
        return f"{self.option} {self.message}"


class SweepInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM: running trials were closed as interrupted and are retried on resume."""
