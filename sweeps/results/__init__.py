"""What a study found, read back from its Optuna storage: status and the report (``report``,
with its trials table ``_trials``, figures ``_plots`` and HTML page ``_html``), the best stable
config as YAML (``export``), and whether explosion pruning cost a good trial (``regret``)."""

from __future__ import annotations

from sweeps.results._trials import (
    compute_savings,
    explosion_rate_by_param,
    outcome_of,
    steps_accounting,
    trials_frame,
)
from sweeps.results.export import (
    ExportError,
    ExportResult,
    TrainingPlan,
    best_trial,
    export_best,
    training_plan,
)
from sweeps.results.regret import (
    RegretError,
    RegretReport,
    RerunOutcome,
    explosion_regret,
    rerun_trial,
)
from sweeps.results.report import ReportPaths, render_status, study_status, write_report

__all__ = [
    "ExportError",
    "ExportResult",
    "RegretError",
    "RegretReport",
    "ReportPaths",
    "RerunOutcome",
    "TrainingPlan",
    "best_trial",
    "compute_savings",
    "explosion_rate_by_param",
    "explosion_regret",
    "export_best",
    "outcome_of",
    "render_status",
    "rerun_trial",
    "steps_accounting",
    "study_status",
    "training_plan",
    "trials_frame",
    "write_report",
]
