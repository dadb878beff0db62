"""StabilityConfig: the unit a sweep samples, a user exports, and a training loop applies.

Plain data with a YAML/JSON round trip. Every field is validated in ``__post_init__`` and a
bad value raises :class:`ConfigError` naming the field, the constraint and the value received.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import yaml

CLIP_METHODS = ("none", "norm", "value", "agc", "autoclip", "zclip")
INIT_SCHEMES = (
    "default",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
    "normal",
    "residual_zero",
)
SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("sgd", "sgd_nesterov", "adam", "adamw")
PRECISIONS = ("fp32", "bf16", "fp16", "fp16_noscale")
SPIKE_POLICIES = ("skip", "stop")


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the field and the fix; ``field``
    is the offending field's name when one field is to blame."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(kw_only=True)
class StabilityConfig:
    """Everything that decides whether a training run stays stable.

    Clipping (``clip_method`` and its parameters), weight init, learning rate with warm-up and
    schedule, optimizer settings, precision with dynamic loss scaling, gradient accumulation and
    gradient standardisation. Parameters of a method that is not selected are kept but unused,
    so a sweep can fix them once and switch methods freely.
    """

    # clipping
    clip_method: str = "none"
    clip_threshold: float = 1.0
    """max norm for ``norm``; max |g| for ``value``."""
    clip_norm_type: float = 2.0
    agc_clip_factor: float = 0.01
    """AGC lambda: max ratio of unit-wise gradient norm to unit-wise parameter norm."""
    agc_eps: float = 1e-3
    autoclip_percentile: float = 10.0
    """AutoClip threshold: this percentile of the global-norm history (Seetharaman 2020)."""
    autoclip_history: int = 1000
    zclip_alpha: float = 0.97
    zclip_z_threshold: float = 2.5
    zclip_warmup: int = 25
    grad_standardize: bool = False
    """Scale each layer's gradient to unit L2 norm before clipping (standardisation)."""

    # initialisation
    init: str = "default"
    init_std: float = 0.02
    """standard deviation of the ``normal`` scheme."""
    init_gain: float = 1.0
    """gain of the xavier / orthogonal schemes."""

    # learning rate
    lr: float = 1e-3
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    """floor of the cosine / linear decay, as a fraction of ``lr``."""

    # optimizer
    optimizer: str = "adamw"
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    # precision
    precision: str = "fp32"
    loss_scale_init: float = 2.0**16
    loss_scale_growth_interval: int = 2000

    # accumulation
    grad_accum_steps: int = 1

    # what an anomalous step does (benchmarks/detection_quality.py chose the default)
    on_spike: str = "skip"
    """``skip``: an anomalous step (gradient-norm spike or non-finite) has its update dropped
    on device, and training goes on; the run stops only when the loss is non-finite or
    diverges, or ``spike_patience`` steps in a row are skipped. ``stop``: an anomaly that lasts
    a few steps stops the run at once."""
    spike_patience: int = 10
    """``on_spike: skip``: this many skipped steps in a row mean the run cannot settle."""

    _CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "clip_method": CLIP_METHODS,
        "init": INIT_SCHEMES,
        "schedule": SCHEDULES,
        "optimizer": OPTIMIZERS,
        "precision": PRECISIONS,
        "on_spike": SPIKE_POLICIES,
    }

    def __post_init__(self) -> None:
        for name, choices in self._CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(
                    f"{name} must be one of {', '.join(choices)}; got {value!r}.", field=name
                )
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("float", "int") and isinstance(value, bool):
                raise ConfigError(f"{f.name} must be a number; got {value!r}.", field=f.name)
            if f.type == "float":
                if not isinstance(value, int | float):
                    raise ConfigError(f"{f.name} must be a number; got {value!r}.", field=f.name)
                value = float(value)
                setattr(self, f.name, value)
                if not math.isfinite(value):
                    raise ConfigError(f"{f.name} must be finite; got {value!r}.", field=f.name)
            elif f.type == "int":
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                    setattr(self, f.name, value)
                if not isinstance(value, int):
                    raise ConfigError(f"{f.name} must be an integer; got {value!r}.",
                                      field=f.name)
            elif f.type == "bool" and not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false; got {value!r}.",
                                  field=f.name)
        self._check_ranges()

    def _check_ranges(self) -> None:
        positive = ("clip_threshold", "agc_clip_factor", "agc_eps", "lr", "eps",
                    "loss_scale_init", "init_std", "init_gain", "zclip_z_threshold")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0; got {getattr(self, name)!r}.",
                                  field=name)
        non_negative = ("warmup_steps", "weight_decay", "momentum")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0; got {getattr(self, name)!r}.",
                                  field=name)
        at_least_one = ("grad_accum_steps", "autoclip_history", "loss_scale_growth_interval",
                        "spike_patience")
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1; got {getattr(self, name)!r}.",
                                  field=name)
        if self.zclip_warmup < 2:
            raise ConfigError(f"zclip_warmup must be >= 2; got {self.zclip_warmup!r}.",
                              field="zclip_warmup")
        if self.clip_norm_type != math.inf and self.clip_norm_type <= 0:
            raise ConfigError(
                f"clip_norm_type must be > 0 or inf; got {self.clip_norm_type!r}.",
                field="clip_norm_type")
        for name in ("beta1", "beta2", "zclip_alpha"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1); got {value!r}.", field=name)
        if not 0.0 < self.autoclip_percentile <= 100.0:
            raise ConfigError(
                f"autoclip_percentile must be in (0, 100]; got {self.autoclip_percentile!r}.",
                field="autoclip_percentile")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must be in [0, 1]; got {self.min_lr_ratio!r}.",
                              field="min_lr_ratio")
        if self.momentum >= 1.0:
            raise ConfigError(f"momentum must be < 1; got {self.momentum!r}.", field="momentum")
        if self.optimizer == "sgd_nesterov" and self.momentum == 0:
            raise ConfigError(
                "momentum must be > 0 when optimizer is sgd_nesterov; got 0.0 "
                "(use optimizer: sgd for plain SGD).", field="momentum"
            )

    # ---------------------------------------------------------------- round trip
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StabilityConfig:
        """Build from a mapping. Accepts an exported file's layout (``{config: {...}, ...}``)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a stability config must be a mapping; got {type(data).__name__}.")
        if "config" in data and isinstance(data["config"], Mapping):
            data = data["config"]
        known = set(cls.field_names())
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown field {unknown[0]!r} in stability config; valid fields: "
                f"{', '.join(sorted(known))}."
            )
        return cls(**dict(data))

    def replace(self, **changes: Any) -> StabilityConfig:
        return self.from_dict({**self.to_dict(), **changes})

    def to_yaml(self, path: str | Path | None = None, extra: Mapping[str, Any] | None = None
                ) -> str:
        """YAML text of this config; with ``extra`` the config goes under ``config:``."""
        doc: dict[str, Any] = self.to_dict()
        if extra:
            doc = {"config": doc, **extra}
        text = yaml.safe_dump(doc, sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, source: str | Path) -> StabilityConfig:
        """Load from a YAML file path or YAML text (safe loader)."""
        text = _read_source(source)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"stability config is not valid YAML: {exc}") from None
        return cls.from_dict(data or {})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_json(cls, source: str | Path) -> StabilityConfig:
        try:
            data = json.loads(_read_source(source))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"stability config is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> StabilityConfig:
        """Load a ``.json`` or ``.yaml``/``.yml`` file."""
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {str(path)!r} does not exist.")
        if path.suffix == ".json":
            return cls.from_json(path)
        return cls.from_yaml(path)


def _read_source(source: str | Path) -> str:
    if isinstance(source, Path):
        return source.read_text()
    if "\n" not in source and len(source) < 4096:
        candidate = Path(source)
        if candidate.suffix in (".yaml", ".yml", ".json"):
            if not candidate.exists():
                raise ConfigError(f"config file {source!r} does not exist.")
            return candidate.read_text()
    return source
