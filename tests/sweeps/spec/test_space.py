"""Search space: define-by-run suggestions on a real in-memory Optuna study."""

from __future__ import annotations

import math
import warnings
from typing import Any

import optuna
import pytest

from stability.config import StabilityConfig
from sweeps.spec import (
    SpecError,
    SweepSpec,
    config_from_params,
    grid_points,
    grid_size,
    make_pruner,
    make_sampler,
    parse_spec,
    suggest,
)
from sweeps.spec import sweep_spec as spec_module
from sweeps.spec._params import CategoricalParam, FloatParam, IntParam

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _rnn_adding(seed: int = 0, device: str = "cpu", seq_len: int = 50, hidden: int = 64,
                batch_size: int = 64, loss: str = "mse") -> None: ...


@pytest.fixture(autouse=True)
def fake_workloads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec_module, "builtin_workloads", lambda: {"rnn_adding": _rnn_adding})


def make_spec(space: dict[str, Any] | None = None, **top: Any) -> SweepSpec:
    data: dict[str, Any] = {
        "study": "t",
        "workload": {"name": "rnn_adding", "args": {"seq_len": 20, "hidden": 8}},
        "steps": 100,
        "fixed": {"optimizer": "sgd", "precision": "fp32", "momentum": 0.5},
        "space": space if space is not None else {
            "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
            "warmup_steps": {"type": "int", "low": 0, "high": 50, "step": 10},
            # declared before its parent on purpose: suggestion order must put the parent first
            "clip_threshold": {"type": "float", "low": 0.1, "high": 10.0, "log": True,
                               "when": {"clip_method": ["norm"]}},
            "clip_method": {"type": "categorical", "choices": ["none", "norm", "agc"]},
            "agc_clip_factor": {"type": "float", "low": 0.001, "high": 0.1, "log": True,
                                "when": {"clip_method": ["agc"]}},
            "workload.loss": {"type": "categorical", "choices": ["mse", "huber"]},
        },
        **top,
    }
    return parse_spec(data)


def run_trials(spec: SweepSpec, n: int) -> list[tuple[optuna.trial.FrozenTrial,
                                                       StabilityConfig, dict[str, Any]]]:
    study = optuna.create_study(sampler=make_sampler(spec), pruner=make_pruner(spec))
    out = []
    for _ in range(n):
        trial = study.ask()
        config, args = suggest(trial, spec)
        study.tell(trial, math.log10(config.lr) ** 2)
        out.append((study.trials[-1], config, args))
    return out


def test_conditional_params_only_when_condition_holds() -> None:
    spec = make_spec(sampler="random", seed=1)
    assert list(spec.space)[:3] == ["lr", "warmup_steps", "clip_method"]
    seen = set()
    for frozen, config, _ in run_trials(spec, 30):
        method = frozen.params["clip_method"]
        seen.add(method)
        assert ("clip_threshold" in frozen.params) == (method == "norm")
        assert ("agc_clip_factor" in frozen.params) == (method == "agc")
        assert config.clip_method == method
        if method != "norm":  # an inactive field keeps the StabilityConfig default
            assert config.clip_threshold == StabilityConfig().clip_threshold
    assert seen == {"none", "norm", "agc"}


def test_distributions_steps_fixed_and_workload_args() -> None:
    spec = make_spec(sampler="random", seed=2)
    for frozen, config, args in run_trials(spec, 20):
        lr = frozen.distributions["lr"]
        assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log
        assert (lr.low, lr.high) == (1e-4, 1.0)
        warm = frozen.distributions["warmup_steps"]
        assert isinstance(warm, optuna.distributions.IntDistribution) and warm.step == 10
        assert frozen.params["warmup_steps"] % 10 == 0
        assert config.warmup_steps == frozen.params["warmup_steps"]
        assert config.lr == frozen.params["lr"]
        assert (config.optimizer, config.precision, config.momentum) == ("sgd", "fp32", 0.5)
        assert args == {"seq_len": 20, "hidden": 8, "loss": frozen.params["workload.loss"]}
        assert "workload.loss" in frozen.params and "loss" not in frozen.params


def test_log_sampling_covers_decades() -> None:
    spec = make_spec({"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}},
                     sampler="random", seed=3)
    lrs = [config.lr for _, config, _ in run_trials(spec, 40)]
    decades = {math.floor(math.log10(lr)) for lr in lrs}
    assert decades == {-4, -3, -2, -1}  # uniform in log space: every decade is hit


def test_config_from_params_inverts_suggest() -> None:
    spec = make_spec(sampler="random", seed=4)
    for frozen, config, args in run_trials(spec, 15):
        assert config_from_params(frozen.params, spec) == (config, args)
        fixed_trial = optuna.trial.FixedTrial(frozen.params)
        assert suggest(fixed_trial, spec) == (config, args)


def test_config_from_params_accepts_numpy_scalars() -> None:
    import numpy as np

    params = {"lr": np.float64(0.01), "warmup_steps": np.int64(20), "clip_method": "norm",
              "clip_threshold": np.float32(2.0), "workload.loss": "huber"}
    config, args = config_from_params(params, make_spec())
    assert (config.lr, config.warmup_steps, config.clip_threshold) == (0.01, 20, 2.0)
    assert type(config.warmup_steps) is int and args["loss"] == "huber"


@pytest.mark.parametrize(("params", "expected"), [
    ({"lr": 0.1, "warmup_steps": 10, "clip_method": "none"},
     "params.workload.loss: missing; the space needs a value for it"),
    ({"lr": 0.1, "warmup_steps": 10, "clip_method": "none", "workload.loss": "mse", "x": 1},
     "params.x: not a param of this sweep's space"),
    ({"lr": 2.0, "warmup_steps": 10, "clip_method": "none", "workload.loss": "mse"},
     "params.lr: 2.0 is outside [0.0001, 1.0] log; use a value inside the space"),
    ({"lr": 0.1, "warmup_steps": 15, "clip_method": "none", "workload.loss": "mse"},
     "params.warmup_steps: 15 is outside integers [0, 50] step 10"),
    ({"lr": 0.1, "warmup_steps": 10, "clip_method": "none", "workload.loss": "l1"},
     "params.workload.loss: 'l1' is outside one of 'mse', 'huber'"),
    ({"lr": 0.1, "warmup_steps": 10, "clip_method": "none", "workload.loss": "mse",
      "clip_threshold": 1.0},
     "params.clip_threshold: given (1.0) but inactive: it needs clip_method in ['norm']"),
])
def test_config_from_params_errors(params: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError) as info:
        config_from_params(params, make_spec())
    assert expected in str(info.value)


def test_grid_enumerates_distinct_conditional_points() -> None:
    space = {
        "clip_method": {"type": "categorical", "choices": ["none", "norm", "agc"]},
        "clip_threshold": {"type": "float", "low": 0.5, "high": 1.5, "step": 0.5,
                           "when": {"clip_method": ["norm"]}},
        "agc_clip_factor": {"type": "categorical", "choices": [0.01, 0.1],
                            "when": {"clip_method": ["agc"]}},
        "warmup_steps": {"type": "int", "low": 0, "high": 10, "step": 10},
    }
    spec = make_spec(space, sampler="grid", n_trials=12)
    # (1 none + 3 norm thresholds + 2 agc factors) x 2 warm-ups = 12, not 3 x 3 x 2 x 2 = 36
    points = grid_points(spec.space)
    assert len(points) == 12
    assert {"clip_method": "norm", "clip_threshold": 1.5, "warmup_steps": 10} in points
    study = optuna.create_study(sampler=make_sampler(spec))
    # The driver uses ask/tell and stops at n_trials (Optuna's own study.stop() would raise
    # outside optimize()), so run exactly the grid's size.
    for _ in range(12):
        trial = study.ask()
        study.tell(trial, suggest(trial, spec)[0].lr)  # the last tell must not raise
    assert len(study.trials) == 12
    tried = {tuple(sorted(t.params.items())) for t in study.trials}
    assert tried == {tuple(sorted(p.items())) for p in points}  # each distinct point once


def test_grid_without_conditions_is_the_product() -> None:
    space = {"optimizer": ["sgd", "adam"],
             "lr": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1}}
    spec = make_spec(space, sampler="grid", n_trials=6, fixed={"precision": "fp32"})
    assert len(grid_points(spec.space)) == 6
    study = optuna.create_study(sampler=make_sampler(spec))
    study.optimize(lambda t: suggest(t, spec)[0].lr, n_trials=10)
    combos = {(t.params["optimizer"], round(t.params["lr"], 9)) for t in study.trials}
    assert combos == {(o, lr) for o in ("sgd", "adam") for lr in (0.1, 0.2, 0.3)}


def test_a_huge_grid_is_refused_by_counting_not_listing(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Issue 22 item 3: 10^9 warm-up steps x 10^6 accumulation steps was listed value by value
    (OOM-killed at 24 GB after 70 s); it is counted, and refused naming its size."""
    for cls in (IntParam, FloatParam, CategoricalParam):
        monkeypatch.setattr(cls, "grid_values", lambda self: pytest.fail("a grid was listed"))
    space = {"warmup_steps": {"type": "int", "low": 0, "high": 10**9, "step": 1},
             "grad_accum_steps": {"type": "int", "low": 1, "high": 10**6, "step": 1}}
    with pytest.raises(SpecError, match=r"space: the grid has 1,000,000,001,000,000 points, "
                                        r"more than 100,000; use coarser steps"):
        make_spec(space, sampler="grid", n_trials=4)
    space = {"warmup_steps": {"type": "int", "low": 0, "high": 10**7, "step": 1}}
    with pytest.raises(SpecError, match=r"the grid has 10,000,001 points"):
        make_spec(space, sampler="grid", n_trials=4)


@pytest.mark.parametrize("space", [
    {"clip_method": ["none", "norm", "agc"],
     "clip_threshold": {"type": "float", "low": 0.5, "high": 1.5, "step": 0.5,
                        "when": {"clip_method": ["norm"]}},
     "agc_clip_factor": {"type": "categorical", "choices": [0.01, 0.1],
                         "when": {"clip_method": ["agc"]}}},
    {"optimizer": ["sgd", "adam", "adamw", "sgd_nesterov"],
     "clip_method": {"type": "categorical", "choices": ["none", "norm", "value", "agc"],
                     "when": {"optimizer": ["adam", "adamw"]}},
     "clip_threshold": {"type": "float", "low": 1.0, "high": 3.0, "step": 1.0,
                        "when": {"clip_method": ["norm"], "optimizer": ["adam"]}},
     "warmup_steps": {"type": "int", "low": 0, "high": 40, "step": 10}},
])
def test_grid_size_counts_what_grid_points_lists(space: dict[str, Any]) -> None:
    spec = make_spec(space, sampler="random", fixed={"precision": "fp32"})
    assert grid_size(spec.space) == len(grid_points(spec.space))


def test_a_condition_that_can_never_hold_is_refused() -> None:
    """Issue 22 item 4: clip_threshold under clip_norm_type 2.0 and clip_method none, where
    clip_norm_type exists only under clip_method norm, was accepted and never sampled."""
    space = {"clip_method": ["none", "norm"],
             "clip_norm_type": {"type": "categorical", "choices": [1.0, 2.0],
                                "when": {"clip_method": ["norm"]}},
             "clip_threshold": {"type": "float", "low": 0.5, "high": 5.0,
                                "when": {"clip_norm_type": [2.0], "clip_method": ["none"]}}}
    with pytest.raises(SpecError) as info:
        make_spec(space)
    assert str(info.value) == (
        "space.clip_threshold.when: this condition can never hold, so clip_threshold would "
        "never be sampled (clip_norm_type is only sampled when clip_method is 'norm'); fix the "
        "condition or drop the param")
    space["clip_threshold"]["when"]["clip_method"] = ["norm"]  # consistent: accepted
    assert make_spec(space).space["clip_threshold"].when


def test_tpe_on_conditional_space_is_quiet_and_seeded() -> None:
    spec = make_spec(seed=5, sampler={"name": "tpe", "n_startup_trials": 5})
    sampler = make_sampler(spec)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no experimental / independent-sampling warnings
        first = [f.params for f, _, _ in run_trials(spec, 12)]
    second = [f.params for f, _, _ in run_trials(spec, 12)]
    assert first == second  # same seed, same suggestions


def test_tpe_options_respected() -> None:
    spec = make_spec(sampler={"name": "tpe", "multivariate": False, "n_startup_trials": 2})
    assert isinstance(make_sampler(spec), optuna.samplers.TPESampler)  # no group without mv
    assert len(run_trials(spec, 4)) == 4


def test_random_sampler_seeded() -> None:
    spec = make_spec(sampler="random", seed=9)
    assert isinstance(make_sampler(spec), optuna.samplers.RandomSampler)
    a = [f.params for f, _, _ in run_trials(spec, 5)]
    b = [f.params for f, _, _ in run_trials(spec, 5)]
    c = [f.params for f, _, _ in run_trials(spec.with_overrides(seed=10), 5)]
    assert a == b and a != c


def test_pruners() -> None:
    assert isinstance(make_pruner(make_spec()), optuna.pruners.NopPruner)
    median = make_pruner(make_spec(pruner={"name": "median", "n_warmup_steps": 20}))
    assert isinstance(median, optuna.pruners.MedianPruner)
    percentile = make_pruner(make_spec(pruner={"name": "percentile", "percentile": 25}))
    assert isinstance(percentile, optuna.pruners.PercentilePruner)
    hyperband = make_pruner(make_spec(pruner="hyperband", report_every=5))
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    # resources are training steps: report_every .. steps unless the spec says otherwise
    assert (hyperband._min_resource, hyperband._max_resource) == (5, 100)


def test_median_pruner_prunes_through_the_public_api() -> None:
    spec = make_spec(pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0})
    study = optuna.create_study(sampler=make_sampler(spec), pruner=make_pruner(spec))
    for value in (1.0, 1.0):
        trial = study.ask()
        trial.report(value, step=10)
        study.tell(trial, value)
    bad = study.ask()
    bad.report(100.0, step=10)
    assert bad.should_prune()
