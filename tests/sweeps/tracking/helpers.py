"""What the tracking tests share: the study's spec, configs, a SQLite store's URI and
readers, a trial task, and synthetic runs (records plus the matching trace)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from stability.diagnose import diagnose
from stability.records import StepRecord, Verdict
from sweeps.tracking import StudyTracker, TrackingSettings
from sweeps.worker import TrialTask

SPEC = {"study": "tiny", "description": "tracking test",
        "workload": {"name": "deep_mlp", "args": {"depth": 4, "width": 16}},
        "space": {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}}}
STABLE = {"lr": 1e-3}
EXPLODES = {"optimizer": "sgd", "lr": 5.0}
CLIPPED = {"lr": 1e-2, "clip_method": "norm", "clip_threshold": 0.5}
FLOAT_MAX = 1.7976931348623157e308


def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def client_for(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(uri)


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def as_stored(values: np.ndarray) -> np.ndarray:
    """What a SQL store gives back: NaN stays NaN, +-inf becomes +-1.8e308."""
    return np.clip(np.asarray(values, dtype=np.float64), -FLOAT_MAX, FLOAT_MAX)


def task(tracking: TrackingSettings, number: int, config: dict[str, Any],
         steps: int = 40) -> TrialTask:
    return TrialTask(study_name="tiny", trial_number=number, trial_id=number, config=config,
                     workload="deep_mlp", workload_args={"depth": 4, "width": 16}, steps=steps,
                     eval_every=20, report_every=10, seed=0, metric="eval_loss",
                     direction="minimize", tracking=tracking)


# ---------------------------------------------------------------------------- synthetic runs
LAYERS = ("net.0", "net.2", "net.4")


def synthetic(n: int, *, nan_at: int | None = None, inf_at: int | None = None,
              lr_change_at: int | None = None) -> tuple[list[StepRecord], pd.DataFrame]:
    """n steps of records and the matching trace (norms grow 2x per step after nan_at - 5)."""
    records, rows = [], []
    for step in range(n):
        norms = np.array([0.1, 0.2, 0.3]) * (1 + step / 100)
        if nan_at is not None and step >= nan_at - 5:
            norms = norms * 2.0 ** (step - nan_at + 6)
        loss = 1.0 / (1 + step)
        nonfinite = 0
        if nan_at is not None and step >= nan_at:
            norms[2], loss, nonfinite = math.nan, math.nan, 1
        if inf_at is not None and step == inf_at:
            norms[1], nonfinite = math.inf, 1
        global_norm = float(np.sqrt(np.sum(norms ** 2)))
        lr = 0.1 if lr_change_at is None or step < lr_change_at else 0.05
        records.append(StepRecord(step=step, loss=loss, global_norm=global_norm,
                                  layer_norms=norms, layer_names=LAYERS, lr=lr,
                                  nonfinite=nonfinite))
        rows.append({"step": step, "loss": loss, "grad_norm": global_norm, "lr": lr,
                     "clip_coef": 1.0, "clip_threshold": math.nan, "amp_scale": 1.0,
                     "overflow": False, "nonfinite": nonfinite,
                     **{f"grad_norm/{name}": v for name, v in zip(LAYERS, norms)}})
    return records, pd.DataFrame(rows)


def fake_result(trace: pd.DataFrame, verdict: Verdict | None = None) -> SimpleNamespace:
    n = len(trace)
    return SimpleNamespace(trace=trace, verdict=verdict, diagnosis=diagnose(trace, verdict),
                           evals=[{"eval_loss": 0.5, "step": float(n)}],
                           final_eval={"eval_loss": 0.5}, steps_run=n, wall_time_s=1.0)


def settings_for(study: StudyTracker, run_id: str, layer_every: int = 10) -> TrackingSettings:
    settings = study.settings.for_run(run_id)
    settings.layer_every = layer_every
    return settings

