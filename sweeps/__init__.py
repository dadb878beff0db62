"""stabsweep's sweep layer: spec, search space, trials on Ray, MLflow tracking, CLI.

The names a user needs, from one place, each imported on first use: ``import sweeps`` loads
no optuna, ray, mlflow or torch. Sub-packages by job, each importing only those before it:
common <- spec <- store <- tracking <- worker <- results <- driver <- cli.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sweeps.common import lazy_exports

if TYPE_CHECKING:
    from sweeps.common import OptionError, Outcome, SweepError, SweepInterrupted
    from sweeps.driver import (
        RunOptions,
        SweepEvent,
        SweepSummary,
        TrialDispatched,
        TrialEnded,
        TrialRecovered,
        run_sweep,
    )
    from sweeps.results import explosion_regret, export_best, training_plan
    from sweeps.spec import SpecError, SweepSpec, load_spec, parse_spec
    from sweeps.store import StudyNotFound, load_study

_WHERE = {
    "OptionError": "sweeps.common",
    "Outcome": "sweeps.common",
    "SweepError": "sweeps.common",
    "SweepInterrupted": "sweeps.common",
    "RunOptions": "sweeps.driver",
    "SweepEvent": "sweeps.driver",
    "SweepSummary": "sweeps.driver",
    "TrialDispatched": "sweeps.driver",
    "TrialEnded": "sweeps.driver",
    "TrialRecovered": "sweeps.driver",
    "run_sweep": "sweeps.driver",
    "explosion_regret": "sweeps.results",
    "export_best": "sweeps.results",
    "training_plan": "sweeps.results",
    "SpecError": "sweeps.spec",
    "SweepSpec": "sweeps.spec",
    "load_spec": "sweeps.spec",
    "parse_spec": "sweeps.spec",
    "StudyNotFound": "sweeps.store",
    "load_study": "sweeps.store",
}

__all__ = [
    "OptionError",
    "Outcome",
    "RunOptions",
    "SpecError",
    "StudyNotFound",
    "SweepError",
    "SweepEvent",
    "SweepInterrupted",
    "SweepSpec",
    "SweepSummary",
    "TrialDispatched",
    "TrialEnded",
    "TrialRecovered",
    "explosion_regret",
    "export_best",
    "load_spec",
    "load_study",
    "parse_spec",
    "run_sweep",
    "training_plan",
]

__getattr__ = lazy_exports(__name__, _WHERE)
