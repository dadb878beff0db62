"""sweeps.worker.objective: one trial as a worker runs it, without Ray, on a tiny deep_mlp.

``run_trial`` turns a task into an outcome and never raises for the workload's errors; a
``TrialOutcome``'s ``user_attrs()`` is what the driver stores in the study (JSON-safe).
Outcomes are compared with their words (``"complete"``, ``"exploded"``, ...): the outcome type
is a ``str``, whether plain or an enum.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

import optuna
import pytest

from sweeps.common import Outcome, keys
from sweeps.worker import PENALTY, TrialOutcome, TrialTask, run_trial, worker_info
from tests.sweep_helpers import FIXTURE_MODULE

optuna.logging.set_verbosity(optuna.logging.WARNING)

STEPS = 40
ARGS = {"depth": 4, "width": 16, "batch_size": 32}
STABLE = {"lr": 1e-3}
HUGE_LR = {"optimizer": "sgd", "lr": 5.0}
"""deep_mlp depth 4 under plain SGD at lr 5: the loss is 100s of times the first by step 2."""

SCRIPTED = "stabsweep_scripted_workload"


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The ``module:factory`` name of a user workload whose loss raises or jumps on request."""
    folder = tmp_path_factory.mktemp("workload")
    (folder / f"{SCRIPTED}.py").write_text(FIXTURE_MODULE)
    sys.path.insert(0, str(folder))
    try:
        yield f"{SCRIPTED}:make"
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(SCRIPTED, None)


SPIKY = "stabsweep_spiky_workload"
SPIKY_MODULE = '''
from stability.workloads import load_workload


def make(seed=0, device="cpu", at=30, **args):
    """deep_mlp whose batch number ``at`` has its inputs x1000: one gradient spike."""
    inner = load_workload("deep_mlp", seed=seed, device=device, **args)

    class Spiky:
        name = "spiky"

        def model(self):
            return inner.model()

        def batches(self):
            for i, (x, y) in enumerate(inner.batches()):
                yield (x * 1000.0 if i == at else x), y

        def loss(self, model, batch):
            return inner.loss(model, batch)

        def evaluate(self, model):
            return inner.evaluate(model)

    return Spiky()
'''


@pytest.fixture(scope="module")
def spiky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A deep_mlp with one batch of inputs 1000x too large: the guard skips its update."""
    folder = tmp_path_factory.mktemp("spiky")
    (folder / f"{SPIKY}.py").write_text(SPIKY_MODULE)
    sys.path.insert(0, str(folder))
    try:
        yield f"{SPIKY}:make"
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(SPIKY, None)


def task(config: dict[str, Any], *, workload: str = "deep_mlp",
         workload_args: dict[str, Any] | None = None, **overrides: Any) -> TrialTask:
    fields: dict[str, Any] = {
        "study_name": "objective", "trial_number": 3, "trial_id": 7, "config": config,
        "workload": workload, "workload_args": ARGS if workload_args is None else workload_args,
        "steps": STEPS, "eval_every": 20, "report_every": 10, "seed": 0,
        "metric": "eval_loss", "direction": "minimize"}
    fields.update(overrides)
    return TrialTask(**fields)


def json_safe(attrs: dict[str, Any]) -> dict[str, Any]:
    """The attrs as the study stores them: strict JSON (no NaN / inf) round trip."""
    loaded: dict[str, Any] = json.loads(json.dumps(attrs, allow_nan=False))
    return loaded


# ------------------------------------------------------------------ complete
def test_a_stable_trial_completes_with_its_eval_and_progress() -> None:
    seen: list[int] = []
    info = worker_info("cpu", 1)
    outcome = run_trial(task(STABLE), info=info, on_progress=seen.append)
    assert outcome.outcome == "complete"
    assert outcome.trial_number == 3 and outcome.steps_run == STEPS
    assert outcome.reason == f"completed {STEPS} steps"
    assert math.isfinite(outcome.value) and outcome.value == outcome.final_eval["eval_loss"]
    assert 0 < outcome.value < 2  # deep_mlp: mean prediction scores ~1.0
    assert seen == [10, 20, 30, 40]  # every report_every steps
    # the driver reports what the worker evaluated (no storage: the worker reported nothing)
    assert [step for step, _ in outcome.intermediate] == [20]
    assert not outcome.reported_by_worker
    assert outcome.verdict is None and outcome.error is None
    assert outcome.diagnosis is not None and outcome.diagnosis["exploded"] is False
    assert outcome.worker == info and outcome.wall_time_s > 0
    assert outcome.mlflow_run_id is None  # no tracking asked for


def test_a_trial_that_trained_on_past_a_skipped_update_is_rescued(spiky: str) -> None:
    """Issue 20: neither complete nor exploded; its value counts, its cost is shown."""
    outcome = run_trial(task({"lr": 1e-2}, workload=spiky), info=worker_info("cpu", 1))
    assert outcome.outcome == "rescued" and outcome.skipped_updates == 1
    assert outcome.reason == "rescued: completed 40 steps after 1 skipped update(s), the first " \
                             "at step 30"
    assert math.isfinite(outcome.value) and outcome.value == outcome.final_eval["eval_loss"]
    attrs = json_safe(outcome.user_attrs())
    assert attrs[keys.OUTCOME] == "rescued" and attrs[keys.SKIPPED] == 1
    plain = run_trial(task({"lr": 1e-2, "on_spike": "stop"}, workload=spiky),
                      info=worker_info("cpu", 1))
    assert plain.outcome == "exploded"  # the same spike stops a run that does not skip


def test_the_same_task_gives_the_same_value() -> None:
    first, again = run_trial(task(STABLE)), run_trial(task(STABLE))
    assert first.value == again.value
    assert run_trial(task(STABLE, seed=1)).value != first.value


def test_a_metric_the_workload_does_not_report_fails_the_trial() -> None:
    outcome = run_trial(task(STABLE, metric="accuracy", steps=10, eval_every=10))
    assert outcome.outcome == "failed" and outcome.value is None
    assert outcome.reason == ("objective metric 'accuracy' not in the workload's evaluation "
                              "(it returns ['eval_loss']); fix objective.metric")
    assert outcome.steps_run == 10


# ------------------------------------------------------------------ exploded
@pytest.mark.parametrize(("direction", "sign"), [("minimize", 1.0), ("maximize", -1.0)])
def test_a_huge_lr_explodes_and_is_penalised(direction: str, sign: float) -> None:
    seen: list[int] = []
    outcome = run_trial(task(HUGE_LR, direction=direction), on_progress=seen.append)
    assert outcome.outcome == "exploded"
    assert outcome.value == sign * PENALTY  # ranked below every stable trial
    assert outcome.steps_run < 10 and seen == []  # stopped at once, before the first report
    verdict = outcome.verdict
    assert verdict is not None and verdict["step"] < outcome.steps_run
    assert outcome.reason.startswith("exploded: ") and verdict["kind"] in outcome.reason
    assert outcome.diagnosis is not None and outcome.diagnosis["exploded"] is True
    attrs = outcome.user_attrs()
    assert attrs[keys.OUTCOME] == "exploded"
    assert attrs[keys.VERDICT]["kind"] == verdict["kind"]
    assert attrs[keys.ONSET_STEP] == outcome.diagnosis["onset_step"] is not None
    assert attrs[keys.FIRST_LAYER] == outcome.diagnosis["first_layer"] is not None


def test_stop_on_explosion_false_records_the_verdict_and_runs_every_step(scripted: str
                                                                          ) -> None:
    """A detector fires at step 11 (the loss jumps 1000x, its gradient does not): with
    stop_on_explosion the trial ends there; without, it trains to the last step, keeps its
    outcome and records the verdict and its onset."""
    jump = {**ARGS, "bump_at": 12}  # the 12th loss: step 11
    stopped = run_trial(task(STABLE, workload=scripted, workload_args=jump))
    assert stopped.outcome == "exploded" and stopped.steps_run == 12
    assert stopped.verdict is not None and stopped.verdict["step"] == 11

    seen: list[int] = []
    ran_on = run_trial(task(STABLE, workload=scripted, workload_args=jump,
                            stop_on_explosion=False), on_progress=seen.append)
    assert ran_on.outcome == "complete" and ran_on.steps_run == STEPS
    assert seen == [10, 20, 30, 40]
    assert math.isfinite(ran_on.value) and ran_on.reason == f"completed {STEPS} steps"
    assert ran_on.verdict == stopped.verdict  # the same first verdict, recorded
    assert ran_on.diagnosis is not None and ran_on.diagnosis["onset_step"] is not None
    attrs = ran_on.user_attrs()
    assert attrs[keys.OUTCOME] == "complete"
    assert attrs[keys.VERDICT]["step"] == 11
    assert attrs[keys.ONSET_STEP] == ran_on.diagnosis["onset_step"]


def test_stop_on_explosion_false_without_a_verdict_is_a_plain_complete_trial() -> None:
    outcome = run_trial(task(STABLE, stop_on_explosion=False))
    assert outcome.outcome == "complete" and outcome.verdict is None
    attrs = outcome.user_attrs()
    assert keys.VERDICT not in attrs and keys.ONSET_STEP not in attrs


def test_running_on_past_an_explosion_ends_exploded_on_a_non_finite_eval() -> None:
    outcome = run_trial(task(HUGE_LR, stop_on_explosion=False))
    assert outcome.steps_run == STEPS  # not stopped by the verdict ...
    assert outcome.outcome == "exploded" and outcome.value == PENALTY  # ... but diverged
    assert outcome.reason == f"exploded: final eval_loss is {outcome.final_eval['eval_loss']}"
    assert not math.isfinite(outcome.final_eval["eval_loss"])
    assert outcome.verdict is not None
    stored = json_safe(outcome.user_attrs())  # inf in final_eval: stored as text
    assert stored[keys.FINAL_EVAL]["eval_loss"] in ("inf", "nan")


# ------------------------------------------------------------------ slow (Optuna's pruner)
def test_a_trial_the_pruner_stops_is_slow_with_its_last_value() -> None:
    storage = optuna.storages.InMemoryStorage()
    pruner = optuna.pruners.ThresholdPruner(upper=1e-9)  # any eval_loss above 0 is pruned
    study = optuna.create_study(study_name="objective", storage=storage, pruner=pruner)
    trial = study.ask()
    outcome = run_trial(task(STABLE, trial_number=trial.number, trial_id=trial._trial_id,
                             storage=storage, pruner=pruner))
    assert outcome.outcome == "slow" and outcome.steps_run == 20  # the first evaluation
    assert outcome.reported_by_worker
    assert outcome.intermediate == [(20, outcome.value)] and outcome.value is not None
    assert outcome.reason == "pruned by the eval_loss pruner at step 20 (stable but slow)"
    assert study.trials[0].intermediate_values == {20: outcome.value}  # the worker reported


# ------------------------------------------------------------------ failed
def test_a_workload_that_raises_fails_the_trial_with_its_traceback(scripted: str) -> None:
    seen: list[int] = []
    info = {"node": "n1", "pid": 1}
    outcome = run_trial(task(STABLE, workload=scripted, workload_args={**ARGS, "raise_at": 15},
                             report_every=4), info=info, on_progress=seen.append)
    assert outcome.outcome == "failed" and outcome.value is None
    assert outcome.reason == "workload raised RuntimeError: boom at call 15"  # first line
    assert seen == [4, 8, 12] and outcome.steps_run == 12  # the last step reported
    assert outcome.error is not None
    assert outcome.error.startswith("Traceback (most recent call last):")
    assert f"{SCRIPTED}.py" in outcome.error and "in loss" in outcome.error
    assert outcome.error.rstrip().endswith("second line of the message")
    assert outcome.worker == info and outcome.verdict is None and outcome.diagnosis is None
    attrs = outcome.user_attrs()
    assert attrs[keys.OUTCOME] == "failed" and attrs[keys.ERROR] == outcome.error
    assert attrs[keys.STEPS_RUN] == 12
    assert keys.FINAL_EVAL not in attrs and keys.DIAGNOSIS not in attrs


@pytest.mark.parametrize(("change", "raised"), [
    ({"workload": "no_such_workload"}, "WorkloadError: unknown workload 'no_such_workload'"),
    ({"workload_args": {"depth": 1}}, "WorkloadError: workload 'deep_mlp': depth must be >= 2"),
    ({"config": {"lr": -1.0}}, "ConfigError: lr must be"),
    ({"workload": "stabsweep_no_such_module:make"}, "WorkloadError:"),
])
def test_a_trial_that_cannot_start_fails_and_never_raises(change: dict[str, Any],
                                                          raised: str) -> None:
    fields: dict[str, Any] = {"config": STABLE, **change}
    outcome = run_trial(task(**fields))
    assert outcome.outcome == "failed" and outcome.value is None
    assert outcome.reason.startswith(f"workload raised {raised}"), outcome.reason
    assert outcome.steps_run == 0
    assert outcome.error is not None and "Traceback" in outcome.error


# ------------------------------------------------------------------ user_attrs
def test_user_attrs_of_a_complete_trial() -> None:
    outcome = TrialOutcome(5, Outcome.COMPLETE, 0.25, "completed 40 steps", steps_run=40,
                           final_eval={"eval_loss": 0.25, "accuracy": 0.9},
                           diagnosis={"exploded": False, "onset_step": None},
                           wall_time_s=1.23456, worker={"node": "n", "pid": 2},
                           skipped_updates=1)
    attrs = outcome.user_attrs()
    assert attrs == {
        keys.OUTCOME: "complete", keys.REASON: "completed 40 steps", keys.STEPS_RUN: 40,
        keys.SKIPPED: 1,  # issue 22 item 6: a dropped update is counted in the study
        keys.WALL_TIME: 1.235, keys.WORKER: {"node": "n", "pid": 2},
        keys.FINAL_EVAL: {"eval_loss": 0.25, "accuracy": 0.9},
        keys.DIAGNOSIS: {"exploded": False, "onset_step": None}}
    assert all(key.startswith("stabsweep.") for key in attrs)
    assert json_safe(attrs)[keys.OUTCOME] == "complete"


def test_user_attrs_make_non_finite_floats_json_safe() -> None:
    verdict = {"kind": "nonfinite", "step": 7, "value": math.nan, "threshold": math.inf,
               "layer": "03:Linear"}
    outcome = TrialOutcome(1, Outcome.EXPLODED, PENALTY, "exploded: nonfinite", steps_run=8,
                           verdict=verdict,
                           final_eval={"eval_loss": math.inf, "other": -math.inf, "ok": 1.5},
                           diagnosis={"onset_step": 4, "first_layer": "03:Linear"})
    stored = json_safe(outcome.user_attrs())
    assert stored[keys.FINAL_EVAL] == {"eval_loss": "inf", "other": "-inf", "ok": 1.5}
    assert stored[keys.VERDICT] == {"kind": "nonfinite", "step": 7, "value": "nan",
                                    "threshold": "inf", "layer": "03:Linear"}
    assert stored[keys.ONSET_STEP] == 4 and stored[keys.FIRST_LAYER] == "03:Linear"
    assert math.isnan(outcome.verdict["value"])  # the outcome's own data is left as it was


def test_user_attrs_onset_only_for_an_explosion_and_the_error_tail() -> None:
    diagnosis = {"onset_step": 9, "first_layer": "00:Linear"}
    complete = TrialOutcome(0, Outcome.COMPLETE, 0.5, "", diagnosis=diagnosis).user_attrs()
    assert keys.ONSET_STEP not in complete and keys.FIRST_LAYER not in complete
    # exploded without a verdict (a non-finite final eval): the onset is still recorded
    exploded = TrialOutcome(0, Outcome.EXPLODED, PENALTY, "", diagnosis=diagnosis).user_attrs()
    assert (exploded[keys.ONSET_STEP], exploded[keys.FIRST_LAYER]) == (9, "00:Linear")
    error = "Traceback (most recent call last):\n" + "x" * 5000 + "\nRuntimeError: boom"
    attrs = TrialOutcome(0, Outcome.FAILED, None, "workload raised", error=error).user_attrs()
    assert len(attrs[keys.ERROR]) == 4000 and attrs[keys.ERROR].endswith("RuntimeError: boom")
    assert keys.DIAGNOSIS not in attrs and keys.VERDICT not in attrs


def test_worker_info_names_this_process() -> None:
    info = worker_info("cuda", 4, [0, "GPU-1"])
    assert info == {"node": socket.gethostname(), "pid": os.getpid(), "device": "cuda",
                    "torch_threads": 4, "gpu_ids": ["0", "GPU-1"]}
    assert worker_info("cpu", 1)["gpu_ids"] == []


def test_a_task_pickles() -> None:
    """Tasks travel to Ray actors: plain, picklable data."""
    import pickle

    original = task(STABLE, detector={"growth.window": 24}, stop_on_explosion=False)
    copy = pickle.loads(pickle.dumps(original))
    assert (copy.config, copy.detector, copy.stop_on_explosion, copy.workload_args) == (
        STABLE, {"growth.window": 24}, False, ARGS)
