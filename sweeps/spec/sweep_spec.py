"""SweepSpec: a sweep's YAML file, validated before anything runs.

:func:`load_spec` reads the file with ``yaml.safe_load``; :func:`parse_spec` checks every field
and raises :class:`SpecError` with one line that names the dotted field path, what is wrong,
the value received and the fix. Nothing is imported, built or run: a custom workload factory
(``package.module:factory``) is checked for syntax only, a built-in one against its signature.
The search space itself (params, conditions, suggestions) lives in :mod:`sweeps.spec.space`;
the checks against StabilityConfig and the workload registry in :mod:`sweeps.spec._checks`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sweeps.spec._checks import check_combinations, check_targets, parse_fixed, parse_workload
from sweeps.spec._params import Param
from sweeps.spec._values import (
    BUILTIN_WORKLOAD_NAMES,
    NAME_RE,
    RESERVED_WORKLOAD_ARGS,
    NamedSpec,
    ObjectiveSpec,
    SpecError,
    WorkloadSpec,
    as_bool,
    as_int,
    as_number,
    check_keys,
    did_you_mean,
)
from sweeps.spec.samplers import (
    PRUNER_OPTIONS,
    SAMPLER_OPTIONS,
    check_pruner,
    check_sampler,
    parse_named,
)
from sweeps.spec.space import parse_space

__all__ = [  # the spec's values and helpers are re-exported: import them from here
    "BUILTIN_WORKLOAD_NAMES",
    "PRUNER_OPTIONS",
    "RESERVED_WORKLOAD_ARGS",
    "SAMPLER_OPTIONS",
    "NamedSpec",
    "ObjectiveSpec",
    "SpecError",
    "SweepSpec",
    "WorkloadSpec",
    "as_bool",
    "as_int",
    "as_number",
    "check_keys",
    "did_you_mean",
    "load_spec",
    "parse_spec",
]

TOP_KEYS = ("study", "description", "workload", "steps", "eval_every", "report_every",
            "objective", "n_trials", "seed", "sampler", "pruner", "fixed", "space", "detector",
            "stop_on_explosion")
REQUIRED_KEYS = ("study", "workload", "steps", "space")
DIRECTIONS = ("minimize", "maximize")

_STUDY_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_DETECTOR_KEY_RE = re.compile(r"^[A-Za-z_]\w*\.[A-Za-z_]\w*$")
_METRIC_RE = re.compile(r"^[A-Za-z0-9_./-]+$")


# ------------------------------------------------------------------ the spec
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
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise SpecError(src, f"is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line "
                        f"{line}); save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 {path.name}"
                        f" > fixed.yaml), or remove that character", source=src) from None
    except OSError as exc:
        raise SpecError(src, f"cannot be read ({exc.strerror or exc}); check the path and "
                        "its permissions", source=src) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKeyError as exc:
        raise SpecError(exc.path, exc.problem, source=src) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        tag = re.search(r"for the tag '(?:tag:yaml\.org,2002:)?([^']*)'", problem)
        if isinstance(exc, yaml.constructor.ConstructorError) and tag:
            raise SpecError(src, f"the tag !!{tag.group(1)}{where} is not allowed: a spec "
                            "holds plain values (strings, numbers, true/false, lists, "
                            "mappings); remove the tag", source=src) from None
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
        sampler=parse_named("sampler", data.get("sampler"), SAMPLER_OPTIONS, "tpe"),
        pruner=parse_named("pruner", data.get("pruner"), PRUNER_OPTIONS, "none"),
        fixed=fixed, space=space, detector=_parse_detector(data.get("detector")),
        stop_on_explosion=as_bool("stop_on_explosion", data.get("stop_on_explosion", True)),
        source=source)
    check_sampler(spec)
    check_pruner(spec)
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
        nested = isinstance(key, str) and NAME_RE.match(key) and isinstance(value, Mapping)
        items = [(f"{key}.{k}", v) for k, v in value.items()] if nested else [(key, value)]
        for name, item in items:
            if not isinstance(name, str) or not _DETECTOR_KEY_RE.match(name):
                raise SpecError("detector", "keys must be <detector>.<argument> like "
                                f"spike.z_threshold; got {name!r}")
            number = as_number(f"detector.{name}", item)
            # 24.0 (or "24" read as text) -> 24: integer arguments such as window refuse floats
            out[name] = int(number) if float(number).is_integer() else number
    try:
        from stability.detectors import default_detector
    except ImportError:
        return out
    for name, value in out.items():  # one at a time: an error belongs to its own key
        try:
            default_detector({name: value})
        except ValueError as exc:
            raise SpecError(f"detector.{name}",
                            str(exc).removeprefix("default_detector: ").rstrip(".")) from None
    return out
