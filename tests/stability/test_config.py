from __future__ import annotations

import json
import math

import pytest

from stability.config import CLIP_METHODS, ConfigError, StabilityConfig


def test_defaults_are_valid_and_round_trip_yaml(tmp_path):
    config = StabilityConfig(clip_method="agc", agc_clip_factor=0.02, lr=3e-4, warmup_steps=50,
                             schedule="cosine", optimizer="sgd_nesterov", precision="bf16",
                             grad_accum_steps=4, init="orthogonal", grad_standardize=True)
    path = tmp_path / "c.yaml"
    config.to_yaml(path)
    assert StabilityConfig.from_yaml(path) == config
    assert StabilityConfig.load(path) == config
    assert StabilityConfig.from_yaml(config.to_yaml()) == config


def test_round_trip_json_and_exported_layout(tmp_path):
    config = StabilityConfig(clip_method="norm", clip_threshold=2.3)
    assert StabilityConfig.from_json(config.to_json()) == config
    text = config.to_yaml(extra={"provenance": {"study": "s", "trial": 3}})
    assert StabilityConfig.from_yaml(text) == config  # {config: ..., provenance: ...}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config.to_dict()))
    assert StabilityConfig.load(path) == config


def test_ints_given_as_floats_are_accepted():
    assert StabilityConfig(warmup_steps=100.0).warmup_steps == 100
    assert isinstance(StabilityConfig(lr=1).lr, float)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"clip_method": "bogus"}, "clip_method must be one of none, norm, value, agc"),
        ({"init": "he"}, "init must be one of"),
        ({"schedule": "step"}, "schedule must be one of constant, cosine, linear"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, sgd_nesterov, adam, adamw"),
        ({"precision": "fp8"}, "precision must be one of fp32, bf16, fp16"),
        ({"lr": 0.0}, "lr must be > 0; got 0.0"),
        ({"lr": -1e-3}, "lr must be > 0; got -0.001"),
        ({"lr": math.nan}, "lr must be finite; got nan"),
        ({"lr": "fast"}, "lr must be a number; got 'fast'"),
        ({"clip_threshold": 0}, "clip_threshold must be > 0; got 0.0"),
        ({"warmup_steps": -5}, "warmup_steps must be >= 0; got -5"),
        ({"warmup_steps": 2.5}, "warmup_steps must be an integer; got 2.5"),
        ({"grad_accum_steps": 0}, "grad_accum_steps must be >= 1; got 0"),
        ({"beta2": 1.0}, "beta2 must be in [0, 1); got 1.0"),
        ({"momentum": 1.5}, "momentum must be < 1; got 1.5"),
        ({"autoclip_percentile": 0}, "autoclip_percentile must be in (0, 100]; got 0.0"),
        ({"min_lr_ratio": 2}, "min_lr_ratio must be in [0, 1]; got 2.0"),
        ({"grad_standardize": "yes"}, "grad_standardize must be true or false; got 'yes'"),
        ({"optimizer": "sgd_nesterov", "momentum": 0}, "momentum must be > 0 when optimizer"),
        ({"zclip_warmup": 1}, "zclip_warmup must be >= 2; got 1"),
        ({"clip_norm_type": -1}, "clip_norm_type must be > 0 or inf"),
    ],
)
def test_validation_names_field_constraint_and_value(changes, fragment):
    with pytest.raises(ConfigError) as err:
        StabilityConfig(**changes)
    assert fragment in str(err.value)


def test_unknown_field_and_bad_documents():
    with pytest.raises(ConfigError, match=r"unknown field 'learning_rate'.*valid fields: "):
        StabilityConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="must be a mapping; got list"):
        StabilityConfig.from_yaml("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        StabilityConfig.from_yaml("lr: [1,\n")
    with pytest.raises(ConfigError, match="does not exist"):
        StabilityConfig.load("/nonexistent/best.yaml")


def test_replace_validates():
    config = StabilityConfig()
    assert config.replace(clip_method="zclip").clip_method == "zclip"
    with pytest.raises(ConfigError):
        config.replace(clip_method="nope")
    assert set(CLIP_METHODS) == {"none", "norm", "value", "agc", "autoclip", "zclip"}


def test_yaml_is_loaded_safely():
    with pytest.raises(ConfigError):
        StabilityConfig.from_yaml("!!python/object/apply:os.system ['echo hacked']\n")
