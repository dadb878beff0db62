"""What runs on a Ray worker: one trial (:func:`run_trial`: params -> config -> train ->
outcome), and the pool of long-lived actors that run them. Importing it loads neither torch nor
Ray nor MLflow; each is imported where a trial or the pool first needs it."""

from __future__ import annotations

from sweeps.worker.objective import PENALTY, TrialOutcome, TrialTask, run_trial, worker_info
from sweeps.worker.pool import SweepResourceError, WorkerPool, init_ray, plain_ray_output

__all__ = [
    "PENALTY",
    "SweepResourceError",
    "TrialOutcome",
    "TrialTask",
    "WorkerPool",
    "init_ray",
    "plain_ray_output",
    "run_trial",
    "worker_info",
]
