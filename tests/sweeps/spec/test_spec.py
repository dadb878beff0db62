"""SweepSpec: every validation error names its field path, the value and the fix."""

from __future__ import annotations

import copy
import datetime
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sweeps.spec import SpecError, load_spec, parse_spec
from sweeps.spec import sweep_spec as spec_module

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("*.yaml"))
DELETE = object()


def _rnn_adding(seed: int = 0, device: str = "cpu", seq_len: int = 50, hidden: int = 64,
                batch_size: int = 64, loss: str = "mse") -> None: ...


def _deep_mlp(seed: int = 0, device: str = "cpu", depth: int = 16, width: int = 64,
              activation: str = "relu", batch_size: int = 128, loss: str = "mse") -> None: ...


def _open(seed: int = 0, device: str = "cpu", **kwargs: Any) -> None: ...


FAKE_REGISTRY = {"rnn_adding": _rnn_adding, "deep_mlp": _deep_mlp, "cnn_digits": _open,
                 "transformer_lm": _open}


@pytest.fixture(autouse=True)
def fake_workloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validate against known factory signatures, whatever state stability.workloads is in."""
    monkeypatch.setattr(spec_module, "builtin_workloads", lambda: FAKE_REGISTRY)


def base() -> dict[str, Any]:
    return {
        "study": "rnn-adding",
        "workload": {"name": "rnn_adding", "args": {"seq_len": 50}},
        "steps": 400,
        "eval_every": 100,
        "report_every": 10,
        "objective": {"metric": "eval_loss", "direction": "minimize"},
        "n_trials": 40,
        "seed": 0,
        "sampler": {"name": "tpe"},
        "pruner": {"name": "none"},
        "fixed": {"optimizer": "sgd", "precision": "fp32"},
        "space": {
            "lr": {"type": "float", "low": 1.0e-4, "high": 1.0, "log": True},
            "warmup_steps": {"type": "int", "low": 0, "high": 200, "step": 10},
            "clip_method": {"type": "categorical", "choices": ["none", "norm", "agc", "zclip"]},
            "clip_threshold": {"type": "float", "low": 0.1, "high": 10, "log": True,
                               "when": {"clip_method": ["norm"]}},
            "agc_clip_factor": {"type": "float", "low": 0.001, "high": 0.1, "log": True,
                                "when": {"clip_method": ["agc"]}},
            "workload.loss": {"type": "categorical", "choices": ["mse", "huber"]},
        },
        "detector": {},
    }


def patched(*changes: tuple[str, Any]) -> dict[str, Any]:
    """``base()`` with dotted paths set (or deleted with DELETE); ``space.x`` keys keep dots."""
    data = base()
    for path, value in changes:
        node = data
        parts = path.split(".", 1) if path.startswith(("space.", "fixed.")) else path.split(".")
        if parts[0] in ("space", "fixed") and len(parts) == 2:
            node, key = data.setdefault(parts[0], {}), parts[1]
        else:
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            key = parts[-1]
        if value is DELETE:
            node.pop(key, None)
        else:
            node[key] = value
    return data


F = {"type": "float", "low": 0.1, "high": 1.0}
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("range reversed", patched(("space.clip_threshold", {**F, "low": 10.0, "high": 1.0})),
     "space.clip_threshold: low (10.0) must be < high (1.0); swap them"),
    ("range empty", patched(("space.lr", {**F, "low": 0.5, "high": 0.5})),
     "space.lr: low (0.5) must be < high (0.5); to hold a value constant, put it under fixed"),
    ("log low 0", patched(("space.lr", {**F, "low": 0.0, "log": True})),
     "space.lr.low: log scale needs low > 0; got 0.0"),
    ("int log low 0", patched(("space.warmup_steps", {"type": "int", "low": 0, "high": 8,
                                                      "log": True})),
     "space.warmup_steps.low: log scale needs low >= 1 for an int param; got 0"),
    ("unknown workload", patched(("workload.name", "rnn_addng")),
     "workload.name: unknown workload 'rnn_addng' (did you mean 'rnn_adding'?); built-ins are "
     "cnn_digits, deep_mlp, rnn_adding, transformer_lm, or give package.module:factory"),
    ("bad factory path", patched(("workload.name", "mypkg:")),
     "workload.name: 'mypkg:' is not package.module:factory"),
    ("unknown workload arg", patched(("workload.args", {"seqlen": 10})),
     "workload.args.seqlen: rnn_adding has no argument 'seqlen'; valid: seq_len, hidden, "
     "batch_size, loss (did you mean 'seq_len'?)"),
    ("reserved workload arg", patched(("workload.args", {"seed": 3})),
     "workload.args.seed: seed is set per trial by the sweep"),
    ("workload arg not plain", patched(("workload.args", {"hidden": datetime.date(2024, 1, 1)})),
     "workload.args.hidden: must be text, a number, true/false, a list or a mapping"),
    ("workload key", patched(("workload.nmae", "x")),
     "workload.nmae: unknown key; valid keys: name, args (did you mean 'name'?)"),
    ("direction", patched(("objective.direction", "min")),
     "objective.direction: must be minimize or maximize; got 'min'"),
    ("metric", patched(("objective.metric", "eval loss")),
     "objective.metric: must be a metric name such as eval_loss"),
    ("unknown field", patched(("space.foo", F)),
     "space.foo: not a StabilityConfig field or workload argument; valid: clip_method,"),
    ("field typo", patched(("space.lrr", F)), "space.lrr: not a StabilityConfig field or "
     "workload argument (did you mean 'lr'?)"),
    ("steps negative", patched(("steps", -5)), "steps: must be an integer >= 1; got -5"),
    ("steps float", patched(("steps", 10.5)), "steps: must be an integer >= 1; got 10.5"),
    ("steps bool", patched(("steps", True)), "steps: must be an integer >= 1; got True"),
    ("unknown top key", patched(("n_trails", 3)),
     "n_trails: unknown key; valid keys: study, description, workload"),
    ("missing key", patched(("space", DELETE)),
     "space: missing; a sweep spec needs study, workload, steps, space"),
    ("study name", patched(("study", "my study")),
     "study: must be 1-128 letters, digits, '.', '_' or '-'"),
    ("int bounds", patched(("space.warmup_steps", {"type": "int", "low": 0.5, "high": 10})),
     "space.warmup_steps.low: must be an integer; got 0.5"),
    ("int step divides", patched(("space.warmup_steps", {"type": "int", "low": 0, "high": 195,
                                                         "step": 10})),
     "space.warmup_steps.step: high - low (195) is not a multiple of step (10); set high to 190 "
     "or 200"),
    ("float step divides", patched(("space.lr", {**F, "low": 0.1, "high": 0.95, "step": 0.1})),
     "space.lr.step: high - low (0.85) is not a multiple of step (0.1); set high to 0.9 or 1.0"),
    ("int step zero", patched(("space.warmup_steps", {"type": "int", "low": 0, "high": 10,
                                                      "step": 0})),
     "space.warmup_steps.step: must be an integer >= 1; got 0"),
    ("float step negative", patched(("space.lr", {**F, "step": -0.1})),
     "space.lr.step: must be > 0; got -0.1"),
    ("step too big", patched(("space.lr", {**F, "step": 2.0})),
     "space.lr.step: step (2.0) is larger than high - low (0.9)"),
    ("step with log", patched(("space.lr", {**F, "log": True, "step": 0.1})),
     "space.lr.step: cannot be combined with log: true"),
    ("low not number", patched(("space.lr", {**F, "low": "tiny"})),
     "space.lr.low: must be a number; got 'tiny'"),
    ("param key typo", patched(("space.lr", {**F, "logg": True})),
     "space.lr.logg: unknown key; valid keys: type, low, high, log, step, when (did you mean "
     "'log'?)"),
    ("param type", patched(("space.lr", {"low": 0.1, "high": 1.0})),
     "space.lr.type: must be float, int or categorical; got None"),
    ("param not mapping", patched(("space.lr", 0.1)), "space.lr: must be a mapping like"),
    ("empty choices", patched(("space.clip_method", {"type": "categorical", "choices": []})),
     "space.clip_method.choices: must be a non-empty list; got []"),
    ("duplicate choices", patched(("space.clip_method", ["none", "norm", "norm"])),
     "space.clip_method.choices: 'norm' is listed twice; list each choice once"),
    ("bad clip method", patched(("space.clip_method", ["none", "nrom"]),
                                ("space.clip_threshold", DELETE),
                                ("space.agc_clip_factor", DELETE)),
     "space.clip_method.choices: clip_method must be one of none, norm, value, agc, autoclip, "
     "zclip; got 'nrom'"),
    ("bad optimizer", patched(("space.optimizer", ["sgd", "adamx"]), ("fixed.optimizer", DELETE)),
     "space.optimizer.choices: optimizer must be one of sgd, sgd_nesterov, adam, adamw; "
     "got 'adamx'"),
    ("choice clashes with fixed", patched(("space.optimizer", ["sgd", "sgd_nesterov"]),
                                          ("fixed", {"momentum": 0.0})),
     "space.optimizer.choices: clashes with fixed.momentum: momentum must be > 0 when optimizer "
     "is sgd_nesterov"),
    ("range invalid for field", patched(("space.beta2", {**F, "low": 0.9, "high": 1.0})),
     "space.beta2.high: beta2 must be in [0, 1); got 1.0"),
    ("combination invalid", patched(("space.optimizer", ["sgd", "sgd_nesterov"]),
                                    ("space.momentum", {**F, "low": 0.0, "high": 0.9}),
                                    ("fixed.optimizer", DELETE)),
     "space.momentum: the combination lr=0.0001, warmup_steps=0, clip_method='none', "
     "clip_threshold=0.1, agc_clip_factor=0.001, optimizer='sgd_nesterov', momentum=0.0 is not "
     "a valid StabilityConfig: momentum must be > 0 when optimizer is sgd_nesterov"),
    ("str field numeric", patched(("space.optimizer", F), ("fixed.optimizer", DELETE)),
     "space.optimizer.type: optimizer is not a number; use type: categorical with choices from "
     "sgd, sgd_nesterov, adam, adamw"),
    ("int field float", patched(("space.warmup_steps", {**F, "low": 0.0, "high": 10.0})),
     "space.warmup_steps.type: warmup_steps is an integer field; use type: int"),
    ("fixed and space", patched(("fixed.lr", 0.1)),
     "space.lr: also set under fixed.lr; a field is either fixed or searched, remove one"),
    ("fixed unknown", patched(("fixed.lrr", 0.1)),
     "fixed.lrr: not a StabilityConfig field (did you mean 'lr'?); valid: clip_method,"),
    ("fixed workload arg", patched(("fixed.workload.loss", "mse")),
     "fixed.workload.loss: fixed workload arguments go under workload.args.loss"),
    ("fixed bad value", patched(("fixed.precision", "fp8")),
     "fixed.precision: precision must be one of fp32, bf16, fp16, fp16_noscale; got 'fp8'"),
    ("fixed not number", patched(("fixed.momentum", "high")),
     "fixed.momentum: must be a number; got 'high'"),
    ("workload param unknown", patched(("space.workload.lossx", ["mse"])),
     "space.workload.lossx: rnn_adding has no argument 'lossx'"),
    ("workload param fixed too", patched(("workload.args", {"loss": "mse"})),
     "space.workload.loss: also fixed under workload.args.loss"),
    ("when unknown parent", patched(("space.clip_threshold",
                                     {**F, "when": {"clip_mode": ["norm"]}})),
     "space.clip_threshold.when.clip_mode: 'clip_mode' is not a param of the space; a condition "
     "must name a categorical param declared under space (did you mean 'clip_method'?)"),
    ("when fixed parent", patched(("space.clip_method", DELETE), ("fixed.clip_method", "agc")),
     "space.clip_threshold.when.clip_method: 'clip_method' is not a param of the space; a "
     "condition must name a categorical param declared under space; clip_method is fixed, so "
     "drop the condition"),
    ("when bad value", patched(("space.clip_threshold", {**F, "when": {"clip_method": "nrom"}})),
     "space.clip_threshold.when.clip_method: 'nrom' is not a choice of clip_method (none, norm, "
     "agc, zclip); use one of those"),
    ("when numeric parent", patched(("space.clip_threshold", {**F, "when": {"lr": [0.1]}})),
     "space.clip_threshold.when.lr: 'lr' is a float param; a condition must name a categorical"),
    ("when not mapping", patched(("space.clip_threshold", {**F, "when": "norm"})),
     "space.clip_threshold.when: must be a mapping of categorical param -> list of values"),
    ("when cycle", patched(("space.init", {"type": "categorical", "choices": ["default", "normal"],
                                           "when": {"schedule": ["cosine"]}}),
                           ("space.schedule", {"type": "categorical",
                                               "choices": ["constant", "cosine"],
                                               "when": {"init": ["normal"]}})),
     "space.init.when: conditions form a cycle (init -> schedule -> init); remove one of the "
     "conditions"),
    ("report_every", patched(("report_every", 500)),
     "report_every: must be <= steps (400); got 500"),
    ("eval_every", patched(("eval_every", 0)), "eval_every: must be an integer >= 1; got 0"),
    ("eval_every big", patched(("eval_every", 401)),
     "eval_every: must be <= steps (400); got 401"),
    ("n_trials", patched(("n_trials", 0)), "n_trials: must be an integer >= 1; got 0"),
    ("seed", patched(("seed", -1)), "seed: must be an integer >= 0; got -1"),
    ("seed big", patched(("seed", 2**32)), "seed: must be < 2**32; got 4294967296"),
    ("grid needs steps", patched(("sampler", {"name": "grid"})),
     "sampler.name: grid needs every param categorical, int, or float with step; space.lr is a "
     "float without step (add step, or make it categorical)"),
    ("cmaes categorical", patched(("sampler", "cmaes")),
     "sampler.name: cmaes cannot handle categorical params (space.clip_method, "
     "space.workload.loss); use tpe, or fix the categorical params"),
    ("unknown sampler", patched(("sampler", {"name": "tpee"})),
     "sampler.name: unknown sampler 'tpee'; use tpe, random, grid, cmaes"),
    ("sampler option", patched(("sampler", {"name": "tpe", "n_startup": 5})),
     "sampler.n_startup: not an option of the tpe sampler; valid: n_startup_trials,"),
    ("sampler option value", patched(("sampler", {"name": "tpe", "n_startup_trials": -1})),
     "sampler.n_startup_trials: must be an integer >= 0; got -1"),
    ("group without multivariate", patched(("sampler", {"name": "tpe", "group": True,
                                                       "multivariate": False})),
     "sampler.group: needs multivariate: true"),
    ("unknown pruner", patched(("pruner", "asha")),
     "pruner.name: unknown pruner 'asha'; use none, median, percentile, hyperband"),
    ("percentile missing", patched(("pruner", "percentile")),
     "pruner.percentile: the percentile pruner needs percentile in (0, 100)"),
    ("hyperband max", patched(("pruner", {"name": "hyperband", "max_resource": 1000})),
     "pruner.max_resource: must be <= steps (400); got 1000"),
    ("hyperband min", patched(("pruner", {"name": "hyperband", "min_resource": 400})),
     "pruner.min_resource: must be < max_resource (400); got 400"),
    ("median warmup", patched(("pruner", {"name": "median", "n_warmup_steps": 400})),
     "pruner.n_warmup_steps: must be < steps (400) or the pruner never acts; got 400"),
    ("detector value", patched(("detector", {"spike.z_threshold": "high"})),
     "detector.spike.z_threshold: must be a number; got 'high'"),
    ("detector key", patched(("detector", {3: 1.0})),
     "detector: keys must be <detector>.<argument> like spike.z_threshold; got 3"),
    ("detector plain name", patched(("detector", {"spike_factor": 3.0})),
     "detector: keys must be <detector>.<argument> like spike.z_threshold; got 'spike_factor'"),
    ("detector inf", patched(("detector", {"ceiling.max_norm": float("inf")})),
     "detector.ceiling.max_norm: must be finite; got inf"),
    ("detector unknown kind", patched(("detector", {"spikes.z_threshold": 5.0})),
     "detector.spikes.z_threshold: unknown detector 'spikes' in override 'spikes.z_threshold'"),
    ("detector unknown arg", patched(("detector", {"spike": {"z": 5.0}})),
     "detector.spike.z: spike has no argument 'z' (in override 'spike.z'); valid: alpha"),
    ("detector range", patched(("detector", {"growth.window": 2})),
     "detector.growth.window: GrowthDetector: window must be an integer >= 3 but got 2"),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_spec_errors(data: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(data, source="t.yaml")
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith(f"{info.value.path}: ")
    assert info.value.source == "t.yaml"


def test_grid_n_trials_beyond_points() -> None:
    data = patched(("sampler", "grid"), ("space", {
        "clip_method": ["none", "norm"],
        "clip_threshold": {**F, "step": 0.3, "when": {"clip_method": ["norm"]}},
    }))
    with pytest.raises(SpecError, match=r"n_trials: the grid has 5 points, so n_trials \(40\) "
                       r"would repeat them; set n_trials <= 5"):
        parse_spec(data)


@pytest.mark.skipif(importlib.util.find_spec("cmaes") is not None, reason="cmaes is installed")
def test_cmaes_missing_says_pip_install() -> None:
    data = patched(("sampler", "cmaes"), ("space", {"lr": {**F, "log": True}}))
    with pytest.raises(SpecError, match=r"sampler\.name: cmaes needs the cmaes package; pip "
                       r"install cmaes, or use tpe"):
        parse_spec(data)


def test_valid_base_and_defaults() -> None:
    spec = parse_spec({"study": "s", "workload": "deep_mlp", "steps": 5,
                       "space": {"lr": {"type": "float", "low": "1e-4", "high": 1}}})
    assert spec.eval_every == 5 and spec.report_every == 5
    assert spec.n_trials == 20 and spec.seed == 0
    assert spec.sampler.name == "tpe" and spec.pruner.name == "none"
    assert spec.objective.metric == "eval_loss" and spec.objective.direction == "minimize"
    assert spec.space["lr"].low == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as text
    assert spec.workload.name == "deep_mlp" and spec.workload.args == {}


def test_parents_come_first_and_when_is_canonical() -> None:
    data = patched(("space", {
        "clip_threshold": {**F, "when": {"clip_method": ["zclip", "norm", "norm"]}},
        "clip_method": ["none", "norm", "zclip"],
    }))
    spec = parse_spec(data)
    assert list(spec.space) == ["clip_method", "clip_threshold"]
    assert spec.space["clip_threshold"].when == (("clip_method", ("norm", "zclip")),)


def test_fixed_numbers_are_normalised() -> None:
    spec = parse_spec(patched(("fixed", {"momentum": 0, "weight_decay": "1e-4",
                                         "grad_accum_steps": 2.0})))
    assert spec.fixed == {"momentum": 0.0, "weight_decay": 1e-4, "grad_accum_steps": 2}
    assert isinstance(spec.fixed["momentum"], float)


def test_custom_factory_takes_any_args() -> None:
    spec = parse_spec(patched(("workload", {"name": "mypkg.work:make", "args": {"x": 1}}),
                              ("space.workload.anything", [1, 2])))
    assert spec.workload.builtin is False
    assert spec.workload.args == {"x": 1}


def test_detector_overrides_flatten_and_build_the_default_detector() -> None:
    from stability.detectors import default_detector

    spec = parse_spec(patched(("detector", {"spike": {"z_threshold": 5, "warmup": 10},
                                            "growth.window": "24"})))
    assert spec.detector == {"spike.z_threshold": 5, "spike.warmup": 10, "growth.window": 24}
    assert parse_spec(spec.to_dict()).detector == spec.detector
    spike = next(d for d in default_detector(spec.detector, on_spike="stop").detectors
                 if type(d).__name__ == "ZScoreSpikeDetector")
    assert spike.z_threshold == 5.0


def test_round_trip_yaml_spec_dict() -> None:
    spec = parse_spec(base())
    data = spec.to_dict()
    json.dumps(data)  # JSON-serialisable
    assert parse_spec(data) == spec
    again = parse_spec(yaml.safe_load(yaml.safe_dump(data)))
    assert again == spec and again.to_dict() == data
    assert data["space"]["clip_threshold"] == {
        "type": "float", "low": 0.1, "high": 10.0, "log": True,
        "when": {"clip_method": ["norm"]}}
    assert data["space"]["warmup_steps"] == {"type": "int", "low": 0, "high": 200, "step": 10,
                                             "log": False}


def test_space_signature_stable_and_sensitive() -> None:
    spec = parse_spec(base())
    shuffled = base()
    for key in ("space", "fixed"):
        shuffled[key] = dict(reversed(list(shuffled[key].items())))
    shuffled["space"]["clip_threshold"] = dict(reversed(list(
        shuffled["space"]["clip_threshold"].items())))
    shuffled["space"]["clip_threshold"]["high"] = 10.0  # 10 and 10.0 are the same bound
    assert parse_spec(shuffled).space_signature() == spec.space_signature()
    assert len(spec.space_signature()) == 16

    same = spec.with_overrides(n_trials=5, seed=3, study="other")
    assert same.space_signature() == spec.space_signature()

    def sig(*changes: tuple[str, Any]) -> str:
        return parse_spec(patched(*changes)).space_signature()

    narrower = {**F, "low": 1e-4, "high": 0.5, "log": True}
    assert sig(("space.lr", narrower)) != spec.space_signature()
    assert sig(("fixed.precision", "bf16")) != spec.space_signature()
    assert sig(("workload.args", {"seq_len": 100})) != spec.space_signature()
    assert sig(("objective.direction", "maximize")) != spec.space_signature()
    assert sig(("steps", 800)) != spec.space_signature()


def test_with_overrides_validates() -> None:
    spec = parse_spec(base(), source="x.yaml")
    new = spec.with_overrides(n_trials=3, seed=7)
    assert (new.n_trials, new.seed, new.study) == (3, 7, spec.study)
    assert new.source == "x.yaml"
    with pytest.raises(SpecError, match=r"^n_trials: must be an integer >= 1; got 0$"):
        spec.with_overrides(n_trials=0)
    with pytest.raises(SpecError, match=r"^study: must be"):
        spec.with_overrides(study="a b")


def test_load_spec_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=r"nope.yaml: file not found"):
        load_spec(missing)
    bad = tmp_path / "spec.yaml"
    bad.write_text("study: x\nspace:\n  lr: {type: float\n  low: [\n")
    with pytest.raises(SpecError, match=r"spec.yaml: not valid YAML \(line \d+, column \d+\): "):
        load_spec(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match=r"spec.yaml: must be a mapping with keys study, "
                       r"workload, steps, space, ...; got a list"):
        load_spec(bad)
    bad.write_text("# nothing\n")
    with pytest.raises(SpecError, match=r"spec\.yaml: is empty"):
        load_spec(bad)
    bad.write_text(yaml.safe_dump(patched(("steps", -5))))
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert str(info.value) == "steps: must be an integer >= 1; got -5"
    assert info.value.source == str(bad)
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)


def test_load_spec_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(base(), sort_keys=False))
    spec = load_spec(path)
    assert spec == parse_spec(base())
    assert spec.source == str(path)


def test_builtin_list_without_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec_module, "builtin_workloads", lambda: None)
    spec = parse_spec(patched(("workload.args", {"anything": 1})))  # args unchecked
    assert spec.workload.args == {"anything": 1}
    with pytest.raises(SpecError, match="built-ins are cnn_digits, deep_mlp, rnn_adding, "
                       "transformer_lm"):
        parse_spec(patched(("workload.name", "mnist")))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_load(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every example validates, against the real workload registry once it exists."""
    monkeypatch.undo()
    spec = load_spec(path)
    assert spec.study and spec.n_trials >= 1
    assert copy.deepcopy(spec.to_dict()) == parse_spec(spec.to_dict()).to_dict()


def test_examples_are_all_there() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"quick", "rnn_adding", "deep_mlp", "transformer_lm", "cnn_digits"} <= names
    quick = load_spec(EXAMPLES[[p.stem for p in EXAMPLES].index("quick")])
    assert quick.n_trials <= 20 and quick.steps <= 300


def test_a_file_that_is_not_utf8_says_how_to_fix_it(tmp_path: Path) -> None:
    """Issue 22 item 5: the message named the codec's complaint and no fix."""
    path = tmp_path / "s.yaml"
    path.write_bytes(b"study: s\n# caf\xe9\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).endswith(
        "s.yaml: is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8 (e.g. iconv -f "
        "latin1 -t utf-8 s.yaml > fixed.yaml), or remove that character")


def test_a_python_tag_is_refused_without_advice_about_indentation(tmp_path: Path) -> None:
    """Issue 22 item 5: a !!python/... tag was refused with advice about indentation."""
    path = tmp_path / "s.yaml"
    path.write_text("study: !!python/object:os.system ls\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).endswith(
        "s.yaml: the tag !!python/object:os.system (line 1, column 8) is not allowed: a spec "
        "holds plain values (strings, numbers, true/false, lists, mappings); remove the tag")
