"""Export a study's best *stable* configuration as a StabilityConfig YAML with provenance.

Only a COMPLETE trial that did not explode and has a finite value can be exported (an exploded
trial is PRUNED with a penalty as its last value, so it never ranks first). With
``confirm_seeds=K`` the top candidates are re-run on K fresh seeds; the one that stays stable
on every seed with the best median objective wins. The file is written to a temporary file in
the target folder and moved into place, so a failed export never leaves half a file.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_setup.uri import redact
from stability.config import ConfigError, StabilityConfig
from sweeps.common import Outcome, keys

if TYPE_CHECKING:
    import optuna

    from sweeps.spec import SweepSpec

__all__ = [
    "ExportError",
    "ExportResult",
    "RunFn",
    "TrainingPlan",
    "best_trial",
    "default_run_fn",
    "export_best",
    "storage_url_of",
    "training_plan",
    "trial_config",
]

RunFn = Callable[[StabilityConfig, dict[str, Any], int], tuple[float, bool]]
"""``run_fn(config, workload_args, seed) -> (objective value, exploded)``."""



class ExportError(RuntimeError):
    """Nothing can be exported: the message says why and what to do."""


@dataclass(slots=True)
class ExportResult:
    path: Path
    trial_number: int
    value: float
    """the trial's objective value in the sweep."""
    confirmed: dict[int, float]
    """seed -> objective value of the confirmation runs (empty without confirmation)."""
    config: StabilityConfig
    workload_args: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ choosing
def best_trial(study: optuna.Study, top: int = 1) -> list[optuna.trial.FrozenTrial]:
    """Up to ``top`` COMPLETE trials that did not explode and have a finite value, best first
    (by the study's direction; ties go to the earlier trial)."""
    import optuna

    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be an integer >= 1; got {top!r}")
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    stable = [t for t in study.get_trials(deepcopy=False,
                                          states=(optuna.trial.TrialState.COMPLETE,))
              if t.user_attrs.get(keys.OUTCOME) != Outcome.EXPLODED
              and t.value is not None and math.isfinite(t.value)]
    stable.sort(key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]
    return stable[:top]


def trial_config(trial: optuna.trial.FrozenTrial, spec: SweepSpec | None
                 ) -> tuple[StabilityConfig, dict[str, Any]]:
    """The config and workload args a trial ran with: its ``stabsweep.config`` and
    ``stabsweep.workload_args`` attributes, else rebuilt from its params and the spec."""
    from sweeps.spec import SpecError, config_from_params

    stored = trial.user_attrs.get(keys.CONFIG)
    stored_args = trial.user_attrs.get(keys.WORKLOAD_ARGS)
    config: StabilityConfig | None = None
    problem = f"it has no {keys.CONFIG} attribute"
    if isinstance(stored, Mapping):
        try:
            config = StabilityConfig.from_dict(stored)
        except ConfigError as exc:
            problem = f"its {keys.CONFIG} attribute is not a valid config ({exc})"
    args: dict[str, Any] = dict(stored_args) if isinstance(stored_args, Mapping) else {}
    if config is not None and (isinstance(stored_args, Mapping) or spec is None):
        return config, args
    if spec is None:
        raise ExportError(f"cannot rebuild trial {trial.number}'s config: {problem} and the "
                          f"study has no {keys.STUDY_SPEC} attribute; export from a study "
                          "made by stabsweep run")
    try:
        rebuilt, rebuilt_args = config_from_params(trial.params, spec)
    except SpecError as exc:
        raise ExportError(f"cannot rebuild trial {trial.number}'s config: {problem}, and its "
                          f"params do not fit the study's space ({exc})") from None
    return config or rebuilt, args if isinstance(stored_args, Mapping) else rebuilt_args


# ------------------------------------------------------------------ provenance helpers
def storage_url_of(study: optuna.Study) -> str:
    """Where the study lives (RDB URL, journal file or ``in-memory``), not yet redacted."""
    storage = study._storage
    backend = getattr(storage, "_backend", None)
    for obj in (storage, backend):
        url = getattr(obj, "url", None)
        if isinstance(url, str):
            return url
    for obj in (backend, getattr(backend, "_backend", None)):
        path = getattr(obj, "_file_path", None)
        if isinstance(path, str | os.PathLike):
            return f"journal:{os.fspath(path)}"
    name = type(storage).__name__
    return "in-memory" if name == "InMemoryStorage" else name


def _versions(study: optuna.Study) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("stabsweep", "torch", "optuna"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            fallback = study.user_attrs.get(keys.STUDY_VERSION) if package == "stabsweep" else None
            out[package] = str(fallback) if fallback else "not installed"
    return out


def default_run_fn(spec: SweepSpec) -> RunFn:
    """Train in-process with the spec's workload, steps, eval cadence and detector.

    The workload is imported here, so one that cannot be found raises
    :class:`~stability.workloads.WorkloadError` (one line) before any confirmation run."""
    from stability.workloads.loader import find_factory

    find_factory(spec.workload.name)
    metric = spec.objective.metric

    def run(config: StabilityConfig, workload_args: dict[str, Any], seed: int
            ) -> tuple[float, bool]:
        from stability.detectors import detector_for
        from stability.trainer import train

        result = train(spec.workload.name, config, steps=spec.steps,
                       eval_every=spec.eval_every, report_every=spec.report_every, seed=seed,
                       workload_args=workload_args, detector=detector_for(config, spec.detector))
        if metric not in result.final_eval:
            raise ExportError(f"objective metric {metric!r} is not in the workload's evaluation "
                              f"(it has {', '.join(result.final_eval) or 'nothing'}); fix "
                              "objective.metric in the spec")
        return float(result.final_eval[metric]), result.exploded

    return run


# ------------------------------------------------------------------ export
@dataclass(slots=True)
class _Candidate:
    trial: optuna.trial.FrozenTrial
    config: StabilityConfig
    workload_args: dict[str, Any]
    values: dict[int, float] = field(default_factory=dict)
    unstable: dict[int, str] = field(default_factory=dict)
    """seed -> 'exploded' or 'non-finite objective'."""

    @property
    def median(self) -> float:
        return statistics.median(self.values.values()) if self.values else math.nan


def export_best(study: optuna.Study, path: str | Path, *, top: int = 1, confirm_seeds: int = 0,
                run_fn: RunFn | None = None, say: Callable[[str], None] | None = None,
                storage_url: str | None = None) -> ExportResult:
    """Write the best stable trial's StabilityConfig, with provenance, to ``path`` (YAML).

    With ``confirm_seeds=K``, each of the ``top`` best stable trials is re-run on seeds
    ``spec.seed + 1 .. spec.seed + K`` through ``run_fn`` (default: :func:`default_run_fn`);
    the candidate with no explosion on any seed and the best median objective is exported.
    ``storage_url`` (else the study's own) is recorded without credentials.
    Raises :class:`ExportError` when there is nothing stable to export; writes nothing then.
    """
    from sweeps.results._trials import outcome_of, study_spec

    for name, given, low in (("top", top, 1), ("confirm_seeds", confirm_seeds, 0)):
        if isinstance(given, bool) or not isinstance(given, int) or given < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {given!r}")
    target = Path(path)
    if target.is_dir():
        raise ExportError(f"export path {str(target)!r} is a folder; give a file such as "
                          f"{str(target / 'best.yaml')!r}")
    spec = study_spec(study)
    candidates = best_trial(study, top if confirm_seeds else 1)
    if not candidates:
        outcomes = [outcome_of(t) for t in study.get_trials(deepcopy=False)]
        failed = sum(1 for o in outcomes if (Outcome.parse(o) or Outcome.COMPLETE).failed)
        raise ExportError(f"study {study.study_name!r} has no completed trial without an "
                          f"explosion ({outcomes.count(Outcome.EXPLODED)} exploded, {failed} "
                          "failed); run more trials or narrow the lr range")
    pool = [_Candidate(t, *trial_config(t, spec)) for t in candidates]
    seeds = [(spec.seed if spec is not None else 0) + i for i in range(1, confirm_seeds + 1)]
    chosen = pool[0]
    if confirm_seeds:
        chosen = _confirm(study, spec, pool, seeds, run_fn, say or _quiet)
    metric = spec.objective.metric if spec is not None else "objective"
    direction = study.direction.name.lower()
    value = float(chosen.trial.value)  # type: ignore[arg-type]
    provenance: dict[str, Any] = {
        "study": study.study_name,
        "trial": chosen.trial.number,
        "objective": {"metric": metric, "direction": direction, "value": value},
        "params": dict(chosen.trial.params),
        "storage": redact(storage_url or storage_url_of(study)),
        "seeds_confirmed": seeds if confirm_seeds else [],
        "confirmed_values": dict(chosen.values),
        "workload": {"name": spec.workload.name if spec is not None else None,
                     "args": dict(chosen.workload_args)},
        "steps": spec.steps if spec is not None else None,
        "sweep_seed": spec.seed if spec is not None else None,
        # what else changes the numbers: torch's thread count (reductions sum in another
        # order) and the device the trial ran on; `stabsweep train` uses both by default
        "runtime": _runtime(chosen.trial),
        "versions": _versions(study),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if confirm_seeds:
        provenance["confirmed_median"] = chosen.median
        provenance["candidates"] = [
            {"trial": c.trial.number, "sweep_value": float(c.trial.value),  # type: ignore[arg-type]
             "values": dict(c.values), "unstable_seeds": dict(c.unstable)} for c in pool]
    _write_atomic(target, chosen.config, provenance)
    confirmed = f", median {chosen.median:.4g} over seeds {seeds}" if confirm_seeds else ""
    (say or _quiet)(f"exported trial {chosen.trial.number} ({metric} {value:.4g} in the sweep"
                    f"{confirmed}) to {target}")
    return ExportResult(path=target, trial_number=chosen.trial.number, value=value,
                        confirmed=dict(chosen.values), config=chosen.config,
                        workload_args=dict(chosen.workload_args), provenance=provenance)


def _runtime(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The trial's torch threads and device, as its worker reported them."""
    worker = trial.user_attrs.get(keys.WORKER)
    worker = worker if isinstance(worker, dict) else {}
    runtime: dict[str, Any] = {}
    if isinstance(worker.get("torch_threads"), int):
        runtime["torch_threads"] = worker["torch_threads"]
    if worker.get("device"):
        runtime["device"] = str(worker["device"])
    return runtime


def _quiet(line: str) -> None:
    return None


def _confirm(study: optuna.Study, spec: SweepSpec | None, pool: list[_Candidate],
             seeds: list[int], run_fn: RunFn | None, say: Callable[[str], None]) -> _Candidate:
    """Run every candidate on every seed (a candidate stops at its first unstable seed)."""
    if run_fn is None:
        if spec is None:
            raise ExportError(f"study {study.study_name!r} has no {keys.STUDY_SPEC} attribute, "
                              "so its workload cannot be re-run; pass run_fn or export "
                              "without confirmation")
        run_fn = default_run_fn(spec)
    sign = 1.0 if study.direction.name == "MINIMIZE" else -1.0
    for candidate in pool:
        for seed in seeds:
            value, exploded = run_fn(candidate.config, dict(candidate.workload_args), seed)
            candidate.values[seed] = float(value)
            if exploded or not math.isfinite(float(value)):
                candidate.unstable[seed] = "exploded" if exploded else "non-finite objective"
                break
        state = (f"unstable on seed {next(iter(candidate.unstable))}" if candidate.unstable
                 else f"stable, median {candidate.median:.4g}")
        say(f"trial {candidate.trial.number}: {state} over seeds {list(candidate.values)}")
    stable = [c for c in pool if not c.unstable]
    if not stable:
        detail = "; ".join(f"trial {c.trial.number} {why} on seed {seed}"
                           for c in pool for seed, why in c.unstable.items())
        raise ExportError(f"every candidate of study {study.study_name!r} was unstable on some "
                          f"confirmation seed (seeds {seeds[0]}..{seeds[-1]}): {detail}; run "
                          "more trials, lower the lr range, or raise top")
    return min(stable, key=lambda c: (sign * c.median, pool.index(c)))


def _write_atomic(target: Path, config: StabilityConfig, provenance: dict[str, Any]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        config.to_yaml(tmp, extra={"provenance": provenance})
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------ reading it back
@dataclass(slots=True)
class TrainingPlan:
    """What ``stabsweep train FILE`` runs: the config, and the workload, its arguments and the
    steps an exported file names unless the caller chose others."""

    config: StabilityConfig
    workload: str
    workload_args: dict[str, Any]
    steps: int
    seed: int = 0
    """the sweep's seed for an export (the trial's workload and model), else 0."""
    threads: int | None = None
    """torch threads the trial ran with (None: torch's default)."""


def training_plan(path: str | Path, *, workload: str | None = None, steps: int | None = None,
                  workload_args: Mapping[str, Any] | None = None,
                  default_steps: int = 300) -> TrainingPlan:
    """The run a config file describes. A file :func:`export_best` wrote names its workload,
    arguments and steps (its ``provenance``); ``workload``/``steps`` override them, and the
    export's arguments are kept only for its own workload, under ``workload_args``.

    Raises ConfigError for a bad config, OptionError (``workload``, ``steps``) when the run
    cannot be made out."""
    from sweeps.common import OptionError

    config = StabilityConfig.load(path)
    provenance = _provenance(Path(path))
    exported = provenance.get("workload") or {}
    if workload is None and not exported.get("name"):
        raise OptionError("workload", f"is required: {path} does not name one (e.g. "
                          "deep_mlp; `stabsweep workloads` lists them).")
    if steps is not None and steps < 1:
        raise OptionError("steps", f"must be >= 1; got {steps}.")
    same = workload is None or workload == exported.get("name")
    args = dict(exported.get("args") or {}) if same else {}
    args.update(workload_args or {})
    runtime = provenance.get("runtime") or {}
    threads = runtime.get("torch_threads") if isinstance(runtime, dict) else None
    return TrainingPlan(config, workload or str(exported["name"]), args,
                        steps if steps is not None else int(provenance.get("steps")
                                                            or default_steps),
                        seed=int(provenance.get("sweep_seed") or 0),
                        threads=threads if isinstance(threads, int) and threads > 0 else None)


def _provenance(path: Path) -> dict[str, Any]:
    """The ``provenance`` block of a file ``export_best`` wrote (empty otherwise)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    block = doc.get("provenance") if isinstance(doc, dict) else None
    return block if isinstance(block, dict) else {}
