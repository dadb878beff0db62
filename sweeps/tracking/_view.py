"""Where to look in the MLflow UI: the study's shared view, and the URLs that open it.

The URL to open (:meth:`StudyTracker.ui_url`, printed by ``stabsweep run`` and ``stabsweep
ui``) is the experiment's runs in the UI's "Model training" mode with the shared view
``stabsweep``: the study's runs listed flat (a search filter turns MLflow's nesting off, so
every trial is visible without unfolding the study's row), best objective first, useful
columns instead of the empty Source/Models/Dataset, and every run drawn in the charts (not
only the first 10). MLflow 3.17 ignores ``mlflow.experimentKind`` once its GenAI / Model
training switch exists: an experiment opened from the list shows the mode last chosen in that
browser, so the printed URL carries ``workflowType=machine_learning``.

:func:`view_state` is that view (the driver tags the experiment with it); :func:`study_url`
opens it for one study and :func:`study_urls` lists every study of a store.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sweeps.tracking import _settings as names

__all__ = ["study_url", "study_urls", "view_state"]


def study_url(base_url: str, experiment_id: str) -> str:
    """The study's trials in the UI at ``base_url`` (credentials dropped)."""
    parts = urlsplit(base_url)
    base = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"),
                       "", ""))
    return (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={names.VIEW_KEY}")


def study_urls(tracking_uri: str, base_url: str) -> list[tuple[str, str]]:
    """(study, URL of its trials) of every stabsweep study in the store, newest first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    tag = f"mlflow.sharedViewState.{names.VIEW_KEY}"
    return [(e.name, study_url(base_url, e.experiment_id))
            for e in client.search_experiments(order_by=["last_update_time DESC"])
            if tag in e.tags]


def view_state(study: str, metric: str, direction: str, params: list[str]) -> dict[str, Any]:
    """The experiment's shared view (MLflow 3.17: search facets + runs-table UI state)."""
    quoted = study.replace("\\", "\\\\").replace("'", "\\'")
    columns = [f"metrics.`{metric}`", f"tags.`{names.TAG_STATE}`",
               f"tags.`{names.TAG_ONSET_STEP}`", f"tags.`{names.TAG_FIRST_LAYER}`",
               *(f"params.`{p}`" for p in params[:6])]
    return {"searchFilter": f"tags.`{names.TAG_STUDY}` = '{quoted}'",
            "orderByKey": f"metrics.`{metric}`", "orderByAsc": direction == "minimize",
            "runsHiddenMode": "SHOW_ALL", "selectedColumns": columns,
            "hideEmptyCharts": True}
