"""What a finished sweep leaves behind: the report folder and best.yaml under
``stabsweep-out/<study>/``, attached to the study's MLflow run with the summary's numbers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import optuna

from sweeps.common import Outcome
from sweeps.driver.summary import SweepSummary
from sweeps.results import export_best, write_report

__all__ = ["finish_study_run", "output_dir"]


def output_dir(workdir: Path, study: str) -> Path:
    return Path(workdir) / "stabsweep-out" / study


def finish_study_run(study: optuna.Study, summary: SweepSummary, tracker: Any, *,
                     out: Path, storage_url: str) -> None:
    """Write the report (and best.yaml when a trial completed) to ``out``, attach them to the
    study's MLflow run with the summary's numbers, and end that run."""
    paths = write_report(study, out)
    written = [getattr(paths, f.name) for f in dataclasses.fields(paths)
               if f.name not in ("out_dir", "notes")]
    files = {Path(p).name: Path(p) for p in written if p}
    if summary.best is not None:
        best = export_best(study, out / "best.yaml", storage_url=storage_url)
        files[best.path.name] = best.path
    tracker.finish_study(files, {
        "n_finished": summary.count(*(o for o in Outcome if o.finished)),
        "n_exploded": summary.count(Outcome.EXPLODED),
        "best_value": summary.best["value"] if summary.best else math.nan,
        "steps_saved_fraction": summary.steps_saved})
