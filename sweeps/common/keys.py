"""Names of what stabsweep records in the Optuna storage (the study's source of truth).

Trial user attributes (set by the driver when it tells Optuna a trial's end):

==========================  =====================================================================
key                         value
==========================  =====================================================================
stabsweep.outcome           an Outcome (sweeps.common.outcomes)
stabsweep.reason            one line: why the trial ended this way
stabsweep.verdict           Verdict.to_dict() of the detector that fired (exploded trials)
stabsweep.onset_step        step the explosion started (diagnosis), exploded trials
stabsweep.first_layer       first layer to blow up (diagnosis), exploded trials
stabsweep.diagnosis         Diagnosis.to_dict()
stabsweep.steps_run         optimizer steps the trial ran (compute spent)
stabsweep.skipped_updates   updates the guard dropped as spikes or non-finite (diagnosis)
stabsweep.final_eval        last evaluation metrics {name: value}
stabsweep.config            the StabilityConfig the trial ran, as a dict
stabsweep.workload_args     workload arguments the trial ran with
stabsweep.attempt           1 for a first run, 2.. for retries of the same params
stabsweep.retry_of          number of the trial this one retries (retries only)
stabsweep.error             traceback (failed trials)
stabsweep.wall_time_s       seconds the trial ran in its worker
stabsweep.worker            {node, pid, gpu_ids, torch_threads, device}
stabsweep.mlflow_run_id     the trial's MLflow run (set at dispatch, when tracking is on)
==========================  =====================================================================

Study user attributes: ``stabsweep.spec`` (SweepSpec.to_dict()), ``stabsweep.space_signature``,
``stabsweep.version``, ``stabsweep.mlflow_run_id`` (the study's parent MLflow run).
"""

from __future__ import annotations

PREFIX = "stabsweep."

OUTCOME = PREFIX + "outcome"
REASON = PREFIX + "reason"
VERDICT = PREFIX + "verdict"
ONSET_STEP = PREFIX + "onset_step"
FIRST_LAYER = PREFIX + "first_layer"
DIAGNOSIS = PREFIX + "diagnosis"
STEPS_RUN = PREFIX + "steps_run"
SKIPPED = PREFIX + "skipped_updates"
FINAL_EVAL = PREFIX + "final_eval"
CONFIG = PREFIX + "config"
WORKLOAD_ARGS = PREFIX + "workload_args"
ATTEMPT = PREFIX + "attempt"
RETRY_OF = PREFIX + "retry_of"
ERROR = PREFIX + "error"
WALL_TIME = PREFIX + "wall_time_s"
WORKER = PREFIX + "worker"
MLFLOW_RUN = PREFIX + "mlflow_run_id"

STUDY_SPEC = PREFIX + "spec"
STUDY_SIGNATURE = PREFIX + "space_signature"
STUDY_VERSION = PREFIX + "version"
STUDY_MLFLOW_RUN = PREFIX + "mlflow_run_id"

# The outcome words live in sweeps.common.outcomes.Outcome (with their Optuna state and look).
