"""The study's place in the store: its experiment (get or create), and its run on resume.

The experiment is named after the study and tagged for the UI's "Model training" mode; a
deleted one is refused with the commands that restore or purge it. A resumed study reuses its
run only while that run is live in the same experiment.
"""

from __future__ import annotations

import warnings
from typing import Any

from mlflow_setup import artifact_root_for
from sweeps.tracking import _settings as names
from sweeps.tracking._failures import is_transient

__all__ = ["reusable_run", "study_experiment"]


def study_experiment(client: Any, name: str, uri: str) -> str:
    """The id of the experiment named ``name`` (created, with its artifact root, when new)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        root = artifact_root_for(uri)
        try:
            return str(client.create_experiment(
                name, artifact_location=f"{root}/{name}" if root else None,
                tags={names.EXPERIMENT_KIND[0]: names.EXPERIMENT_KIND[1]}))
        except MlflowException as exc:  # another driver created it meanwhile
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise ValueError(
            f"MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted. Restore "
            f"it (`mlflow experiments restore --experiment-id {experiment.experiment_id}`), "
            "delete it for good (`mlflow gc`), or choose another study name.")
    if experiment.tags.get(names.EXPERIMENT_KIND[0]) != names.EXPERIMENT_KIND[1]:
        client.set_experiment_tag(experiment.experiment_id, *names.EXPERIMENT_KIND)
    return str(experiment.experiment_id)


def reusable_run(client: Any, run_id: str | None, experiment_id: str) -> str | None:
    """``run_id`` when it is a live run of ``experiment_id``; else None (with a warning)."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if is_transient(exc):
            raise
        run = None
    if (run is None or run.info.experiment_id != experiment_id
            or run.info.lifecycle_stage != "active"):
        warnings.warn(f"the study's MLflow run {run_id} is gone (deleted, or another store): "
                      "a new study run is created.", RuntimeWarning, stacklevel=3)
        return None
    return str(run.info.run_id)
