"""What a sweep run is given besides its spec, checked in one place.

Every front end (the CLI, ``service`` jobs, a notebook calling :func:`sweeps.driver.run_sweep`)
builds a :class:`RunOptions`; an impossible value is refused when it is built, with an
:class:`~sweeps.common.errors.OptionError` naming the field, before a study, a file or Ray exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sweeps.common import OptionError

__all__ = ["RunOptions"]


@dataclass
class RunOptions:
    n_trials: int | None = None
    """Finished (complete or pruned) trials to reach; None: the spec's."""
    workers: int | None = None
    """Concurrent trials; None: as many as fit the CPUs/GPUs Ray has."""
    ray_address: str | None = None
    """Join this Ray cluster (``auto``, ``ray://head:10001``); None: start a local one."""
    storage: str | None = None
    """Optuna storage URL; None: ``sqlite:///./stabsweep.db`` in ``workdir``."""
    study: str | None = None
    """Study name; None: the spec's."""
    tracking_uri: str | None = None
    """MLflow tracking URI; None: ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``."""
    tracking: bool = True
    """Log the study and its trials to MLflow."""
    cpus_per_trial: float = 1.0
    """CPUs Ray gives each trial (its torch threads)."""
    gpus_per_trial: float = 0.0
    """GPUs Ray gives each trial; fractions share a GPU."""
    seed: int | None = None
    """Overrides the spec's seed."""
    max_retries: int = 2
    """Reruns of the params of a trial whose worker died or was interrupted."""
    max_consecutive_failures: int = 5
    """Trials in a row whose workload raised before the sweep gives up."""
    storage_host: str = "127.0.0.1"
    """Where the storage proxy for remote workers listens (SQLite storage only)."""
    workdir: Path = field(default_factory=Path.cwd)
    """Folder for the default storage, tracking store and ``stabsweep-out/``."""

    def __post_init__(self) -> None:
        _at_least("n_trials", self.n_trials, 1, "")
        _at_least("workers", self.workers, 1, " (leave it unset to use every CPU)")
        _at_least("max_retries", self.max_retries, 0, "")
        _at_least("max_consecutive_failures", self.max_consecutive_failures, 1, "")
        if not self.cpus_per_trial > 0:
            raise OptionError("cpus_per_trial", f"must be > 0; got {self.cpus_per_trial:g}")
        if not self.gpus_per_trial >= 0:
            raise OptionError("gpus_per_trial", f"must be >= 0; got {self.gpus_per_trial:g}")
        self.workdir = Path(self.workdir)


def _at_least(name: str, value: int | None, low: int, hint: str) -> None:
    if value is not None and value < low:
        raise OptionError(name, f"must be >= {low}; got {value}{hint}.")
