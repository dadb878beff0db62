"""sweeps.tracking._settings: TrackingSettings validates its fields and pickles (workers get
it)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from sweeps.tracking import TrackingSettings


def test_settings_validate_and_pickle(tmp_path: Path) -> None:
    settings = TrackingSettings(tracking_uri="sqlite:////x/mlflow.db", experiment_id="1",
                                spool_dir=str(tmp_path))
    assert pickle.loads(pickle.dumps(settings.for_run("abc"))).run_id == "abc"
    assert settings.run_id is None
    with pytest.raises(ValueError, match="layer_every must be an integer >= 1 or None"):
        TrackingSettings(tracking_uri="sqlite:////x.db", experiment_id="1", layer_every=0)
    with pytest.raises(ValueError, match="spool_dir must be an absolute path"):
        TrackingSettings(tracking_uri="sqlite:////x.db", experiment_id="1", spool_dir="rel")
    with pytest.raises(ValueError, match="plots must be one of all, exploded, none; got 'some'"):
        TrackingSettings(tracking_uri="sqlite:////x.db", experiment_id="1", plots="some")
    with pytest.raises(ValueError, match="tracking_uri must be a non-empty URI"):
        TrackingSettings(tracking_uri=" ", experiment_id="1")
