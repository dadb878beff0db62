"""SweepSpec: a sweep's YAML file, validated before anything runs.

:func:`load_spec` reads the file with ``yaml.safe_load``; :func:`parse_spec` checks every field
and raises :class:`SpecError` with one line that names the dotted field path, what is wrong,
the value received and the fix. Nothing is imported, built or run: a custom workload factory
(``package.module:factory``) is checked for syntax only, a built-in one against its signature.
The search space itself (params, conditions, suggestions) lives in :mod:`sweeps.space`;
the checks against StabilityConfig and the workload registry in :mod:`sweeps._spec_checks`.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from sweeps.space import Param

__all__ = [
    "BUILTIN_WORKLOAD_NAMES",
    "PRUNER_OPTIONS",
    "SAMPLER_OPTIONS",
    "NamedSpec",
    "ObjectiveSpec",
    "SpecError",
    "SweepSpec",
    "WorkloadSpec",
    "load_spec",
    "parse_spec",
]

BUILTIN_WORKLOAD_NAMES = ("cnn_digits", "deep_mlp", "rnn_adding", "transformer_lm")
"""Used when ``stability.workloads`` cannot be imported (its registry wins when it can)."""
TOP_KEYS = ("study", "description", "workload", "steps", "eval_every", "report_every",
            "objective", "n_trials", "seed", "sampler", "pruner", "fixed", "space", "detector",
            "stop_on_explosion")
REQUIRED_KEYS = ("study", "workload", "steps", "space")
DIRECTIONS = ("minimize", "maximize")
RESERVED_WORKLOAD_ARGS = ("seed", "device")
"""Set per trial by the sweep (``seed``) and by the CLI (``--device``), never in a spec."""

# Option name -> (kind, exclusive lower bound or inclusive minimum); kind: int, float or bool.
SAMPLER_OPTIONS: dict[str, dict[str, tuple[str, float | None]]] = {
    "tpe": {"n_startup_trials": ("int", 0), "n_ei_candidates": ("int", 1),
            "multivariate": ("bool", None), "group": ("bool", None),
            "constant_liar": ("bool", None)},
    "random": {},
    "grid": {},
    "cmaes": {"n_startup_trials": ("int", 0), "sigma0": ("float", 0.0), "popsize": ("int", 1),
              "use_separable_cma": ("bool", None), "with_margin": ("bool", None),
              "lr_adapt": ("bool", None), "consider_pruned_trials": ("bool", None)},
}
PRUNER_OPTIONS: dict[str, dict[str, tuple[str, float | None]]] = {
    "none": {},
    "median": {"n_startup_trials": ("int", 0), "n_warmup_steps": ("int", 0),
               "interval_steps": ("int", 1), "n_min_trials": ("int", 1)},
    "percentile": {"percentile": ("float", 0.0), "n_startup_trials": ("int", 0),
                   "n_warmup_steps": ("int", 0), "interval_steps": ("int", 1),
                   "n_min_trials": ("int", 1)},
    "hyperband": {"min_resource": ("int", 1), "max_resource": ("int", 1),
                  "reduction_factor": ("int", 2), "bootstrap_count": ("int", 0)},
    "successive_halving": {"min_resource": ("int", 1), "reduction_factor": ("int", 2),
                           "min_early_stopping_rate": ("int", 0),
                           "bootstrap_count": ("int", 0)},
}

_STUDY_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DETECTOR_KEY_RE = re.compile(r"^[A-Za-z_]\w*\.[A-Za-z_]\w*$")
_METRIC_RE = re.compile(r"^[A-Za-z0-9_./-]+$")
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class SpecError(ValueError):
    """A sweep spec is invalid. ``str(err)`` is one line: ``<field path>: <problem and fix>``.

    ``path`` is the dotted field path (or the file name for file-level errors), ``problem``
    the rest, ``source`` the file (or ``<spec>``) the spec came from.
    """

    def __init__(self, path: str, problem: str, *, source: str | None = None) -> None:
        self.path = path
        self.problem = " ".join(problem.split())
        self.source = source
        super().__init__(f"{path}: {self.problem}")


# ------------------------------------------------------------------ value helpers
def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def as_number(path: str, value: Any) -> float | int:
    """A finite int/float; a numeric string is accepted because YAML 1.1 reads ``1e-4`` as text."""
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(path, f"must be a number; got {value!r}")
    if not math.isfinite(value):
        raise SpecError(path, f"must be finite; got {value!r}")
    return value


def as_int(path: str, value: Any, *, minimum: int | None = None) -> int:
    """An integer (``10.0`` accepted); with ``minimum``, also ``>= minimum``."""
    what = "an integer" if minimum is None else f"an integer >= {minimum}"
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        value = float(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or (
            minimum is not None and value < minimum):
        raise SpecError(path, f"must be {what}; got {value!r}")
    return value


def as_bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(path, f"must be true or false; got {value!r}")
    return value


def check_keys(path: str, data: Mapping[Any, Any], valid: Iterable[str]) -> None:
    """Refuse a key that is not in ``valid``, naming it and the valid keys."""
    valid = list(valid)
    for key in data:
        if key not in valid:
            where = f"{path}.{key}" if path else str(key)
            raise SpecError(where, f"unknown key; valid keys: {', '.join(valid)}"
                            f"{did_you_mean(str(key), valid)}")


# ------------------------------------------------------------------ the spec
@dataclass(frozen=True, kw_only=True, slots=True)
class WorkloadSpec:
    name: str
    """a built-in workload name, or ``package.module:factory``."""
    args: dict[str, Any] = field(default_factory=dict)
    """fixed factory arguments; searched ones are ``workload.<arg>`` params of the space."""

    @property
    def builtin(self) -> bool:
        return ":" not in self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(self.args)}


@dataclass(frozen=True, kw_only=True, slots=True)
class ObjectiveSpec:
    metric: str = "eval_loss"
    direction: str = "minimize"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "direction": self.direction}


@dataclass(frozen=True, kw_only=True, slots=True)
class NamedSpec:
    """A sampler or pruner: its name and the options given in the spec (defaults not filled)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


@dataclass(frozen=True, kw_only=True, slots=True)
class SweepSpec:
    """A validated sweep. Build it with :func:`load_spec` or :func:`parse_spec`."""

    study: str
    workload: WorkloadSpec
    steps: int
    space: dict[str, Param]
    """params in suggestion order (a condition's parent before its children)."""
    description: str = ""
    eval_every: int
    report_every: int
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    n_trials: int = 20
    seed: int = 0
    sampler: NamedSpec = field(default_factory=lambda: NamedSpec(name="tpe"))
    pruner: NamedSpec = field(default_factory=lambda: NamedSpec(name="none"))
    fixed: dict[str, Any] = field(default_factory=dict)
    """StabilityConfig fields held constant."""
    detector: dict[str, float | int] = field(default_factory=dict)
    """overrides of the default explosion detector, ``{"spike.z_threshold": 5.0}``."""
    stop_on_explosion: bool = True
    """False: a trial runs to its last step after a detector fires (the verdict and its onset
    are still recorded). For no-pruning baselines and regret reruns."""
    source: str = field(default="<spec>", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Canonical, JSON-serialisable form; ``parse_spec(spec.to_dict())`` gives it back."""
        out: dict[str, Any] = {"study": self.study}
        if self.description:
            out["description"] = self.description
        out.update({
            "workload": self.workload.to_dict(), "steps": self.steps,
            "eval_every": self.eval_every, "report_every": self.report_every,
            "objective": self.objective.to_dict(), "n_trials": self.n_trials, "seed": self.seed,
            "sampler": self.sampler.to_dict(), "pruner": self.pruner.to_dict(),
            "fixed": dict(self.fixed),
            "space": {name: param.to_dict() for name, param in self.space.items()},
            "detector": dict(self.detector),
        })
        if not self.stop_on_explosion:
            out["stop_on_explosion"] = False
        return out

    def space_signature(self) -> str:
        """A stable hash of what makes trial values comparable: space, fixed fields, workload,
        objective and steps. Resuming a study whose signature changed must be refused."""
        payload = {"v": 1, "workload": self.workload.to_dict(), "steps": self.steps,
                   "objective": self.objective.to_dict(), "fixed": self.fixed,
                   "space": {name: param.to_dict() for name, param in self.space.items()}}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_overrides(self, n_trials: int | None = None, seed: int | None = None,
                       study: str | None = None) -> SweepSpec:
        """A copy with command-line overrides, validated like the file."""
        data = self.to_dict()
        for key, value in (("n_trials", n_trials), ("seed", seed), ("study", study)):
            if value is not None:
                data[key] = value
        return parse_spec(data, source=self.source)


# ------------------------------------------------------------------ loading
def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec file; any problem raises :class:`SpecError`."""
    src = str(path)
    path = Path(path)
    if not path.is_file():
        problem = "is a directory; give a .yaml file" if path.is_dir() else "file not found"
        raise SpecError(src, problem, source=src)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(src, f"cannot be read as UTF-8 text ({exc})", source=src) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKeyError as exc:
        raise SpecError(exc.path, exc.problem, source=src) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(src, f"not valid YAML{where}: {problem}; check the indentation, "
                        "colons and quotes there", source=src) from None
    if data is None:
        raise SpecError(src, "is empty; a sweep spec needs at least "
                        f"{', '.join(REQUIRED_KEYS)}", source=src)
    return parse_spec(data, source=src)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of the spec file names a key twice (plain YAML keeps the last silently)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping, naming the key's
    dotted path and both lines (no ``!!python`` tags: SafeLoader's constructors only)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if key == "<<" and key_node.tag == "tag:yaml.org,2002:merge":
                continue
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: construct_mapping reports it
                continue
            if first is not None:
                where = ".".join([*self._parents(node), str(key)])
                raise DuplicateKeyError(where, f"given twice (lines {first} and {line}); "
                                        "YAML keeps only the last, so delete or rename one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-untyped-call]

    def _parents(self, target: yaml.Node) -> list[str]:
        """The keys leading from the document's root mapping to ``target``."""
        def walk(node: yaml.Node, trail: list[str]) -> list[str] | None:
            if node is target:
                return trail
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    found = walk(v, [*trail, str(getattr(k, "value", "?"))])
                    if found is not None:
                        return found
            elif isinstance(node, yaml.SequenceNode):
                for i, v in enumerate(node.value):
                    found = walk(v, [*trail[:-1], f"{trail[-1]}[{i}]"] if trail else [f"[{i}]"])
                    if found is not None:
                        return found
            return None

        root = getattr(self, "_root_node", None)
        return (walk(root, []) if root is not None else None) or []

    def construct_document(self, node: yaml.Node) -> Any:
        self._root_node = node
        return super().construct_document(node)  # type: ignore[no-untyped-call]


def parse_spec(data: Any, source: str = "<spec>") -> SweepSpec:
    """Validate a spec mapping (as read from YAML) into a :class:`SweepSpec`."""
    try:
        return _parse(data, source)
    except SpecError as exc:
        exc.source = source
        raise


def _parse(data: Any, source: str) -> SweepSpec:
    from sweeps._spec_checks import check_combinations, check_targets, parse_fixed, parse_workload
    from sweeps.space import parse_space

    if not isinstance(data, Mapping):
        raise SpecError(source, f"must be a mapping with keys {', '.join(REQUIRED_KEYS)}, ...; "
                        f"got a {type(data).__name__}")
    check_keys("", data, TOP_KEYS)
    for key in REQUIRED_KEYS:
        if key not in data:
            raise SpecError(key, f"missing; a sweep spec needs {', '.join(REQUIRED_KEYS)}")
    study = data["study"]
    if not isinstance(study, str) or not _STUDY_RE.match(study):
        raise SpecError("study", "must be 1-128 letters, digits, '.', '_' or '-' (it names the "
                        f"Optuna study and the MLflow experiment); got {study!r}")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise SpecError("description", f"must be text; got {description!r}")
    steps = as_int("steps", data["steps"], minimum=1)
    cadence = {}
    for key, default in (("eval_every", steps), ("report_every", min(10, steps))):
        cadence[key] = as_int(key, data.get(key, default), minimum=1)
        if cadence[key] > steps:
            raise SpecError(key, f"must be <= steps ({steps}); got {cadence[key]}")
    n_trials = as_int("n_trials", data.get("n_trials", 20), minimum=1)
    seed = as_int("seed", data.get("seed", 0), minimum=0)
    if seed >= 2**32:
        raise SpecError("seed", f"must be < 2**32; got {seed}")
    workload, arg_names = parse_workload(data["workload"], builtin_workloads)
    fixed = parse_fixed(data.get("fixed"))
    space = parse_space(data["space"], fixed=fixed)
    space = check_targets(space, fixed, workload, arg_names)
    check_combinations(space, fixed)
    spec = SweepSpec(
        study=study, description=description, workload=workload, steps=steps,
        eval_every=cadence["eval_every"], report_every=cadence["report_every"],
        objective=_parse_objective(data.get("objective")), n_trials=n_trials, seed=seed,
        sampler=_parse_named("sampler", data.get("sampler"), SAMPLER_OPTIONS, "tpe"),
        pruner=_parse_named("pruner", data.get("pruner"), PRUNER_OPTIONS, "none"),
        fixed=fixed, space=space, detector=_parse_detector(data.get("detector")),
        stop_on_explosion=as_bool("stop_on_explosion", data.get("stop_on_explosion", True)),
        source=source)
    _check_sampler(spec)
    _check_pruner(spec)
    return spec


# ------------------------------------------------------------------ sections
def builtin_workloads() -> Mapping[str, Any] | None:
    """The built-in registry, or None while ``stability.workloads`` cannot be imported.

    Looked up by name at parse time: tests replace it with a fake registry."""
    try:
        from stability.workloads import BUILTIN_WORKLOADS
    except ImportError:
        return None
    return BUILTIN_WORKLOADS


def _parse_objective(raw: Any) -> ObjectiveSpec:
    if raw is None:
        return ObjectiveSpec()
    if isinstance(raw, str):
        raw = {"metric": raw}
    if not isinstance(raw, Mapping):
        raise SpecError("objective", f"must be a mapping {{metric: eval_loss, direction: "
                        f"minimize}}; got {raw!r}")
    check_keys("objective", raw, ("metric", "direction"))
    metric = raw.get("metric", "eval_loss")
    if not isinstance(metric, str) or not _METRIC_RE.match(metric):
        raise SpecError("objective.metric", "must be a metric name such as eval_loss "
                        f"(letters, digits, '_', '.', '/', '-'); got {metric!r}")
    direction = raw.get("direction", "minimize")
    if direction not in DIRECTIONS:
        raise SpecError("objective.direction", f"must be minimize or maximize; got {direction!r}")
    return ObjectiveSpec(metric=metric, direction=direction)


def _parse_named(key: str, raw: Any, table: Mapping[str, Mapping[str, tuple[str, Any]]],
                 default: str) -> NamedSpec:
    if raw is None:
        raw = {"name": default}
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        raise SpecError(key, f"must be a mapping {{name: {default}, <option>: value}} or a name; "
                        f"got {raw!r}")
    name = raw.get("name", default)
    if name not in table:
        raise SpecError(f"{key}.name", f"unknown {key} {name!r}; use {', '.join(table)}")
    options: dict[str, Any] = {}
    for option, value in raw.items():
        if option == "name":
            continue
        path = f"{key}.{option}"
        if option not in table[name]:
            valid = ", ".join(table[name]) or "(none)"
            raise SpecError(path, f"not an option of the {name} {key}; valid: {valid}"
                            f"{did_you_mean(str(option), table[name])}")
        kind, low = table[name][option]
        if kind == "bool":
            options[option] = as_bool(path, value)
        elif kind == "int":
            options[option] = as_int(path, value, minimum=low)
        else:
            options[option] = float(as_number(path, value))
            if options[option] <= low:
                raise SpecError(path, f"must be > {low}; got {value!r}")
    return NamedSpec(name=name, options=options)


def _parse_detector(raw: Any) -> dict[str, float | int]:
    """``{<detector>.<argument>: number}`` (or nested ``{<detector>: {<argument>: number}}``),
    the overrides ``stability.detectors.default_detector`` takes; checked against it."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError("detector", "must be a mapping of <detector>.<argument> -> number, e.g. "
                        f"{{spike.z_threshold: 5.0}}; got {raw!r}")
    out: dict[str, float | int] = {}
    for key, value in raw.items():
        nested = isinstance(key, str) and _NAME_RE.match(key) and isinstance(value, Mapping)
        items = [(f"{key}.{k}", v) for k, v in value.items()] if nested else [(key, value)]
        for name, item in items:
            if not isinstance(name, str) or not _DETECTOR_KEY_RE.match(name):
                raise SpecError("detector", "keys must be <detector>.<argument> like "
                                f"spike.z_threshold; got {name!r}")
            number = as_number(f"detector.{name}", item)
            # 24.0 (or "24" read as text) -> 24: integer arguments such as window refuse floats
            out[name] = int(number) if float(number).is_integer() else number
    try:
        from stability.detectors import DEFAULT_DETECTORS, default_detector
    except ImportError:
        return out
    try:
        default_detector(out)
    except ValueError as exc:
        message = str(exc).removeprefix("default_detector: ").rstrip(".")
        owners = {k: getattr(DEFAULT_DETECTORS.get(k.split(".")[0]), "__name__", "?")
                  for k in out}
        path = next((f"detector.{k}" for k in out if repr(k) in message or message.startswith(
            f"{owners[k]}: {k.split('.', 1)[1]} ")), "detector")
        raise SpecError(path, message) from None
    return out


def _check_sampler(spec: SweepSpec) -> None:
    from sweeps.space import CategoricalParam, grid_points

    name, options = spec.sampler.name, spec.sampler.options
    if name == "tpe" and options.get("group") and options.get("multivariate") is False:
        raise SpecError("sampler.group", "needs multivariate: true; set multivariate: true or "
                        "drop group")
    if name == "cmaes":
        cats = [n for n, p in spec.space.items() if isinstance(p, CategoricalParam)]
        if cats:
            raise SpecError("sampler.name", f"cmaes cannot handle categorical params (space."
                            f"{', space.'.join(cats)}); use tpe, or fix the categorical params")
        if importlib.util.find_spec("cmaes") is None:
            raise SpecError("sampler.name", "cmaes needs the cmaes package; pip install cmaes, "
                            "or use tpe")
    if name == "grid":
        n_points = len(grid_points(spec.space))
        if spec.n_trials > n_points:
            raise SpecError("n_trials", f"the grid has {n_points} points, so n_trials "
                            f"({spec.n_trials}) would repeat them; set n_trials <= {n_points}")


def _check_pruner(spec: SweepSpec) -> None:
    name, options = spec.pruner.name, spec.pruner.options
    if name == "percentile":
        percentile = options.get("percentile")
        if percentile is None or not 0 < percentile < 100:
            raise SpecError("pruner.percentile", "the percentile pruner needs percentile in "
                            f"(0, 100), e.g. 25.0; got {percentile!r}")
    if name in ("median", "percentile") and options.get("n_warmup_steps", 0) >= spec.steps:
        raise SpecError("pruner.n_warmup_steps", f"must be < steps ({spec.steps}) or the pruner "
                        f"never acts; got {options['n_warmup_steps']}")
    if name == "successive_halving" and options.get("min_resource",
                                                    spec.report_every) >= spec.steps:
        raise SpecError("pruner.min_resource", f"must be < steps ({spec.steps}) or the pruner "
                        f"never acts; got {options.get('min_resource', spec.report_every)} "
                        "(it defaults to report_every)")
    if name == "hyperband":
        low = options.get("min_resource", spec.report_every)
        high = options.get("max_resource", spec.steps)
        if high > spec.steps:
            raise SpecError("pruner.max_resource", f"must be <= steps ({spec.steps}); got {high}")
        if low >= high:
            raise SpecError("pruner.min_resource", f"must be < max_resource ({high}); got {low} "
                            "(min_resource defaults to report_every, max_resource to steps)")
