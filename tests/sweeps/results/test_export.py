"""Export of the best stable config: choice of trial, multi-seed confirmation, provenance."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from stability.config import StabilityConfig
from sweeps.common import Outcome, keys
from sweeps.results.export import (
    ExportError,
    best_trial,
    default_run_fn,
    export_best,
    storage_url_of,
)
from sweeps.spec import SweepSpec, config_from_params, parse_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPEC = {
    "study": "exp",
    "workload": {"name": "deep_mlp", "args": {"depth": 3, "width": 8, "batch_size": 16}},
    "steps": 6,
    "eval_every": 3,
    "report_every": 3,
    "seed": 7,
    "objective": {"metric": "eval_loss", "direction": "minimize"},
    "fixed": {"optimizer": "sgd_nesterov"},
    "space": {
        "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        "clip_method": {"type": "categorical", "choices": ["none", "norm"]},
    },
}
DISTS = {"lr": FloatDistribution(1e-4, 1.0, log=True),
         "clip_method": CategoricalDistribution(["none", "norm"])}
C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
# (state, outcome, lr, value); an exploded trial's last intermediate value beats every value
DEFAULT_TRIALS = [
    (C, Outcome.COMPLETE, 1e-3, 0.50),
    (P, Outcome.EXPLODED, 0.9, None),
    (C, Outcome.COMPLETE, 3e-3, 0.20),   # best
    (C, Outcome.COMPLETE, 1e-2, 0.30),   # second
    (F, Outcome.FAILED, 2e-3, None),
    (C, Outcome.COMPLETE, 5e-3, 0.40),   # third
]


def spec() -> SweepSpec:
    return parse_spec(SPEC)


def make_study(trials: list[tuple[Any, ...]] = DEFAULT_TRIALS, *, with_config: bool = True,
               direction: str = "minimize", storage: str | None = None,
               extra: dict[str, Any] | None = None) -> optuna.Study:
    study = optuna.create_study(study_name="exp", direction=direction, storage=storage)
    study.set_user_attr(keys.STUDY_SPEC, spec().to_dict())
    for state, outcome, lr, value in trials:
        params = {"lr": lr, "clip_method": "norm"}
        config, args = config_from_params(params, spec())
        attrs: dict[str, Any] = {keys.OUTCOME: outcome, **(extra or {})}
        if with_config:
            attrs |= {keys.CONFIG: config.to_dict(), keys.WORKLOAD_ARGS: args}
        study.add_trial(create_trial(
            state=state, value=value, params=params, distributions=DISTS, user_attrs=attrs,
            intermediate_values={3: 0.001} if state != F else {}))
    return study


def fake_run(values: dict[float, list[float]], explode: dict[float, int] | None = None,
             calls: list[tuple[float, int]] | None = None) -> Any:
    """run_fn keyed by lr: the i-th seed gets values[lr][i]; explode[lr] = the seed that blows."""
    seeds_seen: dict[float, int] = {}

    def run(config: StabilityConfig, workload_args: dict[str, Any], seed: int
            ) -> tuple[float, bool]:
        assert workload_args == {"depth": 3, "width": 8, "batch_size": 16}
        i = seeds_seen.get(config.lr, 0)
        seeds_seen[config.lr] = i + 1
        if calls is not None:
            calls.append((config.lr, seed))
        return values[config.lr][i], (explode or {}).get(config.lr) == seed

    return run


# ------------------------------------------------------------------ choosing
def test_best_trial_skips_exploded_and_failed_trials() -> None:
    study = make_study()
    assert [t.number for t in best_trial(study, 3)] == [2, 3, 5]
    assert [t.number for t in best_trial(study)] == [2]
    maximize = make_study(direction="maximize")
    assert [t.number for t in best_trial(maximize, 2)] == [0, 5]
    with pytest.raises(ValueError, match="top must be an integer >= 1; got 0"):
        best_trial(study, 0)


def test_export_writes_best_stable_trial_with_provenance(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "best.yaml"
    result = export_best(make_study(), path)
    assert result.trial_number == 2 and result.value == 0.20 and result.confirmed == {}
    loaded = StabilityConfig.from_yaml(path)
    assert loaded == result.config
    assert (loaded.lr, loaded.clip_method, loaded.optimizer) == (3e-3, "norm", "sgd_nesterov")
    prov = yaml.safe_load(path.read_text())["provenance"]
    assert prov["study"] == "exp" and prov["trial"] == 2
    assert prov["objective"] == {"metric": "eval_loss", "direction": "minimize", "value": 0.2}
    assert prov["params"] == {"lr": 3e-3, "clip_method": "norm"}
    assert prov["storage"] == "in-memory" and prov["seeds_confirmed"] == []
    assert prov["workload"] == {"name": "deep_mlp",
                                "args": {"depth": 3, "width": 8, "batch_size": 16}}
    assert prov["steps"] == 6 and prov["sweep_seed"] == 7
    assert set(prov["versions"]) == {"stabsweep", "torch", "optuna"}
    assert prov["versions"]["optuna"] == optuna.__version__
    assert prov["exported_at"].endswith("+00:00")
    assert [p.name for p in path.parent.iterdir()] == ["best.yaml"]  # no temp file left


def test_config_is_rebuilt_from_params_without_the_config_attribute(tmp_path: Path) -> None:
    result = export_best(make_study(with_config=False), tmp_path / "best.yaml")
    assert result.trial_number == 2
    assert result.config == StabilityConfig(lr=3e-3, clip_method="norm", optimizer="sgd_nesterov")
    assert result.workload_args == {"depth": 3, "width": 8, "batch_size": 16}


def test_provenance_never_holds_the_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://alice:s3cr%40t@db.example:5432/optuna?sslmode=require&password=x"
    result = export_best(make_study(), tmp_path / "best.yaml", storage_url=url)
    text = (tmp_path / "best.yaml").read_text()
    assert "s3cr" not in text and "password=x" not in text
    # the one redaction every printed or stored URL goes through (mlflow_setup.uri.redact)
    assert result.provenance["storage"] == (
        "postgresql+psycopg2://alice:***@db.example:5432/optuna?sslmode=require&password=***")


def test_storage_url_of_an_rdb_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    assert storage_url_of(make_study(storage=url)) == url


# ------------------------------------------------------------------ confirmation
def test_confirmation_drops_a_trial_that_explodes_on_one_seed(tmp_path: Path) -> None:
    calls: list[tuple[float, int]] = []
    run = fake_run({3e-3: [0.1, 0.1, 0.1], 1e-2: [0.31, 0.29, 0.30], 5e-3: [0.5, 0.5, 0.5]},
                   explode={3e-3: 9}, calls=calls)
    result = export_best(make_study(), tmp_path / "best.yaml", top=3, confirm_seeds=3,
                         run_fn=run)
    assert result.trial_number == 3
    assert result.confirmed == {8: 0.31, 9: 0.29, 10: 0.30}  # seeds spec.seed + 1 .. + 3
    # the best trial stops at the seed it exploded on; the others run every seed
    assert calls == [(3e-3, 8), (3e-3, 9), (1e-2, 8), (1e-2, 9), (1e-2, 10),
                     (5e-3, 8), (5e-3, 9), (5e-3, 10)]
    prov = yaml.safe_load((tmp_path / "best.yaml").read_text())["provenance"]
    assert prov["seeds_confirmed"] == [8, 9, 10]
    assert prov["confirmed_values"] == {8: 0.31, 9: 0.29, 10: 0.30}
    assert prov["confirmed_median"] == 0.30
    assert prov["candidates"][0] == {"trial": 2, "sweep_value": 0.2,
                                     "values": {8: 0.1, 9: 0.1}, "unstable_seeds": {9: "exploded"}}


def test_confirmation_picks_the_best_median(tmp_path: Path) -> None:
    run = fake_run({3e-3: [0.2, 0.9, 0.8], 1e-2: [0.35, 0.3, 0.4]})
    result = export_best(make_study(), tmp_path / "best.yaml", top=2, confirm_seeds=3,
                         run_fn=run)
    assert result.trial_number == 3 and result.confirmed == {8: 0.35, 9: 0.3, 10: 0.4}


def test_non_finite_confirmation_value_counts_as_unstable(tmp_path: Path) -> None:
    run = fake_run({3e-3: [math.nan], 1e-2: [0.3]})
    result = export_best(make_study(), tmp_path / "best.yaml", top=2, confirm_seeds=1,
                         run_fn=run)
    assert result.trial_number == 3


def test_every_candidate_explodes_raises_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "best.yaml"
    path.write_text("old: file\n")
    run = fake_run({3e-3: [0.1], 1e-2: [0.1, 0.1]}, explode={3e-3: 8, 1e-2: 9})
    with pytest.raises(ExportError) as info:
        export_best(make_study(), path, top=2, confirm_seeds=2, run_fn=run)
    message = str(info.value)
    assert message.startswith("every candidate of study 'exp' was unstable on some "
                              "confirmation seed (seeds 8..9): trial 2 exploded on seed 8; "
                              "trial 3 exploded on seed 9;")
    assert "lower the lr range" in message
    assert path.read_text() == "old: file\n"
    assert [p.name for p in tmp_path.iterdir()] == ["best.yaml"]


def test_no_completed_stable_trial() -> None:
    study = make_study([(P, Outcome.EXPLODED, 0.9, None), (P, Outcome.EXPLODED, 0.5, None),
                        (F, Outcome.FAILED, 1e-3, None)])
    with pytest.raises(ExportError) as info:
        export_best(study, "unused.yaml")
    assert str(info.value) == ("study 'exp' has no completed trial without an explosion "
                               "(2 exploded, 1 failed); run more trials or narrow the lr range")
    assert not Path("unused.yaml").exists()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="confirm_seeds must be an integer >= 0; got -1"):
        export_best(make_study(), tmp_path / "b.yaml", confirm_seeds=-1)
    with pytest.raises(ExportError, match="is a folder; give a file such as"):
        export_best(make_study(), tmp_path)


def test_default_run_fn_trains_the_spec_workload() -> None:
    config, args = config_from_params({"lr": 1e-3, "clip_method": "norm"}, spec())
    value, exploded = default_run_fn(spec())(config, args, 8)
    again, _ = default_run_fn(spec())(config, args, 8)
    assert math.isfinite(value) and value > 0 and exploded is False
    assert again == value  # same seed, same run


def test_train_reproduces_the_exported_trial_threads_and_seed(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """Issue 22 item 8: workers train on 1 thread, `stabsweep train` used torch's default (a
    Conv1d's eval_loss went 1.0104 -> 1.0265). The export records the trial's threads and
    device; train uses them, and the sweep's seed, unless told otherwise."""
    import torch
    from typer.testing import CliRunner

    import stability.trainer
    from sweeps.cli import app
    from sweeps.results import training_plan

    worker = {"node": "h", "pid": 1, "device": "cpu", "torch_threads": 1, "gpu_ids": []}
    path = tmp_path / "best.yaml"
    export_best(make_study(extra={keys.WORKER: worker}), path)
    prov = yaml.safe_load(path.read_text())["provenance"]
    assert prov["runtime"] == {"torch_threads": 1, "device": "cpu"}
    plan = training_plan(path)
    assert (plan.threads, plan.seed) == (1, 7)

    seen: list[tuple[int, int]] = []
    real = stability.trainer.train

    def train(*args: Any, **kwargs: Any) -> Any:
        seen.append((torch.get_num_threads(), kwargs["seed"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(stability.trainer, "train", train)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = CliRunner().invoke(app, ["train", str(path), "--steps", "2"])
        assert result.exit_code in (0, 1), result.output
        result = CliRunner().invoke(app, ["train", str(path), "--steps", "2", "--threads", "2",
                                          "--seed", "3"])
        assert result.exit_code in (0, 1), result.output
    finally:
        torch.set_num_threads(before)
    assert seen == [(1, 7), (2, 3)]
