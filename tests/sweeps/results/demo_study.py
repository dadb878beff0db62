"""A demo study built in memory with the attributes the sweep driver stores.

Shared by test_trials.py (the trials table, rates and savings) and test_report.py (status and
report files): nine trials of every outcome on a four-param space, with their numbers worked
out in those tests' assertions.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sweeps.common import Outcome, keys
from sweeps.spec import SweepSpec, config_from_params, parse_spec

SPEC = {
    "study": "demo",
    "workload": {"name": "deep_mlp", "args": {"depth": 4, "width": 8}},
    "steps": 200,
    "eval_every": 100,
    "objective": {"metric": "eval_loss", "direction": "minimize"},
    "space": {
        "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        "clip_method": {"type": "categorical", "choices": ["none", "norm"]},
        "clip_threshold": {"type": "float", "low": 0.1, "high": 10.0, "log": True,
                           "when": {"clip_method": ["norm"]}},
        "warmup_steps": {"type": "int", "low": 0, "high": 50, "step": 10},
    },
}
DISTS = {"lr": FloatDistribution(1e-4, 1.0, log=True),
         "clip_method": CategoricalDistribution(["none", "norm"]),
         "clip_threshold": FloatDistribution(0.1, 10.0, log=True),
         "warmup_steps": IntDistribution(0, 50, step=10)}


def diagnosis(onset: int, layer: str, kind: str, fix: str) -> dict[str, Any]:
    return {"exploded": True, "onset_step": onset, "first_layer": layer, "verdict_kind": kind,
            "suggestions": [{"intervention": "clip", "text": fix, "changes": {}},
                            {"intervention": "lr", "text": "second fix", "changes": {}}]}


# number: (state, outcome, lr, clip_threshold or None (no clip), value, steps_run, extra attrs)
TRIALS: list[tuple[TrialState, str, float, float | None, float | None, int, dict[str, Any]]] = [
    (TrialState.COMPLETE, Outcome.COMPLETE, 1e-3, None, 0.50, 200, {}),
    (TrialState.COMPLETE, Outcome.COMPLETE, 3e-3, 1.0, 0.30, 200, {}),
    (TrialState.COMPLETE, Outcome.COMPLETE, 1e-2, 5.0, 0.40, 200, {}),
    (TrialState.PRUNED, Outcome.EXPLODED, 0.5, None, None, 120, {
        keys.ONSET_STEP: 95, keys.FIRST_LAYER: "layers.11",
        keys.VERDICT: {"kind": "nonfinite", "step": 120},
        keys.DIAGNOSIS: diagnosis(95, "layers.11", "nonfinite", "clip the global norm at 2.0")}),
    (TrialState.PRUNED, Outcome.EXPLODED, 0.8, 2.0, None, 80, {
        keys.ONSET_STEP: 40, keys.FIRST_LAYER: "layers.0",
        keys.VERDICT: {"kind": "spike", "step": 80},
        keys.DIAGNOSIS: diagnosis(40, "layers.0", "spike", "warm up over 60 steps")}),
    (TrialState.PRUNED, Outcome.EXPLODED, 0.3, None, None, 60, {
        keys.ONSET_STEP: 31, keys.FIRST_LAYER: "layers.11",
        keys.VERDICT: {"kind": "nonfinite", "step": 60},
        keys.DIAGNOSIS: diagnosis(31, "layers.11", "nonfinite", "lower lr to 0.03")}),
    (TrialState.PRUNED, Outcome.SLOW, 0.6, 0.5, None, 100, {}),
    (TrialState.FAIL, Outcome.FAILED, 1e-3, None, None, 10, {
        keys.ERROR: "Traceback (most recent call last):\n  ...\nRuntimeError: boom"}),
    (TrialState.COMPLETE, Outcome.COMPLETE, 2e-4, None, 0.80, 200, {keys.ATTEMPT: 2,
                                                                 keys.RETRY_OF: 7}),
]


def spec() -> SweepSpec:
    return parse_spec(SPEC)


def params_of(lr: float, threshold: float | None, number: int) -> dict[str, Any]:
    params: dict[str, Any] = {"lr": lr, "clip_method": "none" if threshold is None else "norm",
                              "warmup_steps": 10 * (number % 3)}
    if threshold is not None:
        params["clip_threshold"] = threshold
    return params


def make_study(trials: list[Any] = TRIALS, name: str = "demo",
               with_spec: bool = True) -> optuna.Study:
    study = optuna.create_study(study_name=name, direction="minimize")
    the_spec = spec()
    if with_spec:
        study.set_user_attr(keys.STUDY_SPEC, the_spec.to_dict())
    for number, (state, outcome, lr, threshold, value, steps, extra) in enumerate(trials):
        params = params_of(lr, threshold, number)
        config, args = config_from_params(params, the_spec)
        attrs = {keys.OUTCOME: outcome, keys.STEPS_RUN: steps, keys.CONFIG: config.to_dict(),
                 keys.WORKLOAD_ARGS: args, keys.WALL_TIME: 1.5, **extra}
        if outcome == Outcome.EXPLODED:
            attrs[keys.REASON] = f"exploded: {extra[keys.VERDICT]['kind']}"
        intermediate = {100: 0.01} if outcome == Outcome.EXPLODED else (
            {100: 0.9} if outcome == Outcome.SLOW else {})
        study.add_trial(create_trial(
            state=state, value=value, params=params,
            distributions={k: DISTS[k] for k in params}, user_attrs=attrs,
            intermediate_values=intermediate))
    return study
