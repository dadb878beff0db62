"""Detection quality on runs the detectors were never tuned on: model families held out.

    python benchmarks/detection_quality.py             # 9 families x 50 runs (cached)
    python benchmarks/detection_quality.py --quick     # 9 families x 6 runs: a smoke test
    python benchmarks/detection_quality.py --refresh   # re-run the corpus, ignore the cache

**The corpus.** Nine model families: the four built-in workloads and five others written to
break detectors (``benchmarks/_families.py``: gradient scales from 2^-8 to 2^14, a loss that
trains to near zero and bumps, one-step data faults, gated recurrent nets, pre/post-LN
attention). Per run a seeded config: optimizer, lr from stable to explosive, norm clipping,
warm-up, schedule, init, precision fp32 / bf16 / fp16.

**The label is not a detector.** Every run is first trained to its end with no detector
(``NullDetector``; a non-finite update is still never applied), and labelled from its loss
alone: *exploded* (non-finite, or above 10x its step-0 value), *setback* (the smoothed loss
rose and the run ends above 2x its best before the rise), *recovered* (it rose above 2x its
best and came back) or *healthy*. Scored separately: recall on exploded, catches on setbacks,
false flags on recovered + healthy, the lead before the first non-finite loss and before the
blow-up, and how many verdicts came only when the label's own event happened (the loss rule
*10x the first loss* is the label: those verdicts have lead 0).

**Two policies.** ``on_spike: stop`` (replayed over the recorded traces, exactly as the guard
feeds the detectors) and ``on_spike: skip`` (the guard skips spiking updates on device, so it
changes the run: every config is trained again live, stopped at its verdict).

**Held-out families.** The stop policy's thresholds are tuned by a coordinate search over a
small grid (``GRID``) from a fixed starting point (``START``, the defaults before this corpus).
Leave-one-family-out: for each family, tune on the other eight and score on it; the held-out
rows are the figures for families the tuning never saw. Beside them: tuned on the built-ins
only and scored on the five new families, and the shipped defaults (tuned on all nine: the
tuned split) on every family. The skip policy was not tuned on this corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from _common import ROOT, SMALL, cache_dir, median, table

from stability.detectors import (
    DEFAULT_DETECTORS,
    NullDetector,
    default_detector,
    records_from_trace,
)
from stability.records import StepRecord

CORPUS_VERSION = 2
"""Bump when the corpus generator changes: old caches are then ignored."""
STEPS = 250
EXPLODE_FACTOR = 10.0
BUILTIN = ("deep_mlp", "rnn_adding", "transformer_lm", "cnn_digits")
NEW = ("scaled_mlp", "teacher", "faulty_mlp", "gated_rnn", "attn_stack")
FAMILIES = BUILTIN + NEW

# lr near the edge of stability per (family, optimizer family); sampled lrs span
# ref x 10**[-1.5, 0.8]: mostly stable, a third or so explosive. scaled_mlp's sgd lr is divided
# by its loss scale x batch (a sum-reduced, scaled loss multiplies every gradient).
LR_REF = {
    ("deep_mlp", "sgd"): 2.0, ("deep_mlp", "adam"): 0.05,
    ("rnn_adding", "sgd"): 0.25, ("rnn_adding", "adam"): 0.3,
    ("transformer_lm", "sgd"): 2.0, ("transformer_lm", "adam"): 0.5,
    ("cnn_digits", "sgd"): 3.0, ("cnn_digits", "adam"): 0.2,
    ("scaled_mlp", "sgd"): 0.2, ("scaled_mlp", "adam"): 0.05,
    ("teacher", "sgd"): 0.5, ("teacher", "adam"): 0.1,
    ("faulty_mlp", "sgd"): 0.5, ("faulty_mlp", "adam"): 0.05,
    ("gated_rnn", "sgd"): 0.3, ("gated_rnn", "adam"): 0.1,
    ("attn_stack", "sgd"): 2.0, ("attn_stack", "adam"): 0.03,
}
ARG_CHOICES: dict[str, dict[str, Sequence[Any]]] = {
    "deep_mlp": {"depth": (8, 12, 16), "activation": ("relu", "tanh")},
    "rnn_adding": {"seq_len": (20, 30, 40)},
    "transformer_lm": {"norm": ("post", "pre")},
    "cnn_digits": {},
    "scaled_mlp": {"scale": tuple(2.0 ** k for k in range(-8, 15, 2)), "depth": (3, 4, 5)},
    "teacher": {"bumps": (0, 1, 2, 3)},
    "faulty_mlp": {"faults": (0, 1, 2, 3), "fault_scale": (10.0, 30.0, 100.0)},
    "gated_rnn": {"cell": ("gru", "lstm")},
    "attn_stack": {"norm": ("post", "pre"), "n_layers": (2, 3)},
}
INITS = ("default", "default", "xavier_normal", "kaiming_normal", "orthogonal", "normal")


@dataclass(frozen=True)
class RunSpec:
    """One run of the corpus: a family, its arguments, a StabilityConfig and a seed."""

    run_id: int
    family: str
    args: dict[str, Any]
    config: dict[str, Any]
    seed: int
    steps: int = STEPS


def make_corpus(per_family: int, seed: int = 0) -> list[RunSpec]:
    """``per_family`` run specs per family, every choice drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(per_family * len(FAMILIES)):
        family = FAMILIES[i % len(FAMILIES)]
        args = dict(SMALL.get(family, {}))
        for key, choices in ARG_CHOICES[family].items():
            args[key] = choices[int(rng.integers(len(choices)))]
        optimizer = str(rng.choice(["sgd", "sgd_nesterov", "adam"], p=[0.35, 0.2, 0.45]))
        kind = "adam" if optimizer == "adam" else "sgd"
        lr = LR_REF[(family, kind)] * 10 ** rng.uniform(-1.5, 0.8)
        if family == "scaled_mlp" and kind == "sgd":
            lr /= args["scale"] * 64
        config: dict[str, Any] = {"optimizer": optimizer, "lr": float(f"{lr:.3g}")}
        if optimizer == "sgd" and rng.random() < 0.3:
            config["momentum"] = 0.0
            config["lr"] = float(f"{5 * lr:.3g}")  # no momentum: a 10x smaller effective step
        if rng.random() < 0.35:
            config["clip_method"] = "norm"
            threshold = 10 ** rng.uniform(-0.6, 0.7)
            if family == "scaled_mlp":
                threshold *= args["scale"] * 64  # a threshold in the run's own units
            config["clip_threshold"] = float(f"{threshold:.2g}")
        if rng.random() < 0.4:
            config["warmup_steps"] = int(rng.integers(10, 120))
        if rng.random() < 0.3:
            config["schedule"] = "cosine"
        init = str(rng.choice(INITS))
        if init != "default":
            config["init"] = init
            if init == "normal":
                config["init_std"] = float(rng.choice([0.02, 0.05, 0.1]))
        precision = str(rng.choice(["fp32", "bf16", "fp16"], p=[0.6, 0.2, 0.2]))
        if precision == "fp16" and family == "cnn_digits":
            precision = "bf16"  # fp16 convolutions on the CPU are ~20x slower than fp32
        if family == "gated_rnn" and args["cell"] == "lstm":
            precision = "fp32"  # oneDNN has no reduced-precision LSTM on the CPU
        if precision != "fp32":
            config["precision"] = precision
        specs.append(RunSpec(i, family, args, config, int(rng.integers(1000))))
    return specs


# ---------------------------------------------------------------------------- running
def _workload(spec: RunSpec) -> Any:
    if spec.family in BUILTIN:
        from stability.workloads import load_workload

        return load_workload(spec.family, seed=spec.seed, **spec.args)
    import _families

    args = dict(spec.args)
    if spec.family in ("teacher", "faulty_mlp"):
        args["steps"] = spec.steps
    return _families.build(spec.family, spec.seed, **args)


def run_spec(job: tuple[RunSpec, str]) -> dict[str, Any]:
    """Train one spec: ``free`` (no detector, to its end: the label) or ``skip`` (on_spike:
    skip with its default detector, stopped at the verdict)."""
    import torch

    from stability.trainer import train

    spec, mode = job
    torch.set_num_threads(1)
    start = time.perf_counter()
    if mode == "free":
        config = {**spec.config, "on_spike": "stop"}
        detector: Any = NullDetector()
    else:
        config = {**spec.config, "on_spike": "skip"}
        detector = None  # the guard's default for the config: default_detector(on_spike=skip)
    try:
        result = train(_workload(spec), config, steps=spec.steps, detector=detector,
                       seed=spec.seed)
    except Exception as exc:  # one broken config must not sink the corpus
        return {"spec": asdict(spec), "mode": mode, "error": f"{type(exc).__name__}: {exc}"}
    verdict = result.verdict
    return {"spec": asdict(spec), "mode": mode, "trace": result.trace,
            "verdict": None if verdict is None else (verdict.step, verdict.kind),
            "eval": result.final_eval.get("eval_loss", math.nan),
            "seconds": time.perf_counter() - start}


def spec_key(spec: RunSpec, mode: str) -> str:
    text = json.dumps(asdict(spec), sort_keys=True) + f"v{CORPUS_VERSION}/{mode}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


TRAINING_SOURCES = ("guard.py", "gate.py", "optim.py", "clipping.py", "precision.py",
                    "init.py", "trainer.py", "config.py", "workloads/")
"""The parts of ``stability/`` that shape a recorded run's numbers (not its names)."""


def code_fingerprint(mode: str) -> str:
    """What shapes a recorded run: torch, the training code of ``stability/`` and the
    families; the skip runs also depend on the detectors (they stop at the verdict)."""
    import torch

    digest = hashlib.sha256(torch.__version__.encode() + mode.encode())
    package = ROOT / "stability"
    sources = (*TRAINING_SOURCES, "detectors/") if mode == "skip" else TRAINING_SOURCES
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith(sources):
            digest.update(rel.encode() + path.read_bytes())
    digest.update((ROOT / "benchmarks" / "_families.py").read_bytes())
    return digest.hexdigest()[:12]


def load_runs(specs: Sequence[RunSpec], mode: str, *, refresh: bool, workers: int
              ) -> list[dict[str, Any]]:
    """The recorded runs of ``specs`` in ``mode``: cached, else trained now and cached."""
    path = cache_dir() / f"detection-{mode}-{code_fingerprint(mode)}.pkl"
    cached: dict[str, dict[str, Any]] = {}
    if path.exists():
        with path.open("rb") as fh:
            cached = pickle.load(fh)
    keys = [spec_key(s, mode) for s in specs]
    todo = [s for s, k in zip(specs, keys, strict=True) if refresh or k not in cached]
    if todo:
        print(f"corpus ({mode}): training {len(todo)} of {len(specs)} runs with {workers} "
              "worker(s) ...", flush=True)
        start = time.perf_counter()
        jobs = [(s, mode) for s in todo]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(run_spec, jobs, chunksize=2)
            for k, run in enumerate(results, 1):
                cached[spec_key(RunSpec(**run["spec"]), mode)] = run
                _progress(k, len(todo), start)
                if k % 50 == 0:  # an interrupted corpus keeps what it trained
                    _save(cached, path)
        _save(cached, path)
        for stale in cache_dir().glob(f"detection-{mode}-*.pkl"):
            if stale != path:
                stale.unlink()
        print(f"corpus ({mode}): {len(todo)} runs in {time.perf_counter() - start:.0f} s")
    else:
        print(f"corpus ({mode}): {len(specs)} runs from the cache {path.name}")
    return [cached[k] for k in keys]


def _save(cached: dict[str, dict[str, Any]], path: Any) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(cached, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)


def _progress(k: int, n: int, start: float) -> None:
    if k % 50 == 0 or k == n:
        print(f"  {k}/{n} runs, {time.perf_counter() - start:.0f} s", flush=True)


# ---------------------------------------------------------------------------- labels
OUTCOMES = ("exploded", "setback", "recovered", "healthy")


def outcome_of(loss: np.ndarray) -> tuple[str, int | None, int | None]:
    """(label, first non-finite step, blow-up step) of a run from its loss alone."""
    nonfinite = ~np.isfinite(loss)
    with np.errstate(invalid="ignore"):
        blown = nonfinite | (loss > EXPLODE_FACTOR * abs(loss[0]))
    first_nonfinite = int(np.argmax(nonfinite)) if nonfinite.any() else None
    if blown.any():
        return "exploded", first_nonfinite, int(np.argmax(blown))
    smooth = _rolling_median(loss, 9)
    best_before = np.minimum.accumulate(smooth)
    rose = smooth > 2.0 * best_before
    if not rose.any():
        return "healthy", None, None
    first_rise = int(np.argmax(rose))
    best = best_before[first_rise]
    end = float(np.median(loss[-20:]))
    return ("setback" if end > 2.0 * best else "recovered"), None, None


def _rolling_median(x: np.ndarray, w: int) -> np.ndarray:
    pad = np.concatenate([np.full(w - 1, x[0]), x])
    windows = np.lib.stride_tricks.sliding_window_view(pad, w)
    return np.median(windows, axis=1)


@dataclass
class Run:
    """A labelled run (its free trace) and what the skip policy did with the same config."""

    spec: RunSpec
    records: list[StepRecord]
    label: str
    nonfinite_step: int | None
    blowup_step: int | None
    skip_verdict: tuple[int, str] | None = None
    skip_label: str = ""
    """the label of the skip-policy run's own loss, when it was not stopped."""
    seconds: float = 0.0
    loss: np.ndarray = field(default_factory=lambda: np.zeros(0))


def make_run(free: dict[str, Any], skip: dict[str, Any] | None) -> Run:
    loss = free["trace"]["loss"].to_numpy(np.float64)
    label, nonfinite, blowup = outcome_of(loss)
    run = Run(RunSpec(**free["spec"]), records_from_trace(free["trace"]), label, nonfinite,
              blowup, seconds=free["seconds"], loss=loss)
    if skip is not None:
        run.skip_verdict = skip["verdict"]
        if skip["verdict"] is None:
            run.skip_label = outcome_of(skip["trace"]["loss"].to_numpy(np.float64))[0]
    return run


# ---------------------------------------------------------------------------- scoring
Verdicts = list[tuple[int, str] | None]


def first_verdicts(make: Callable[[], Any], runs: Sequence[Run]) -> Verdicts:
    """(step, kind) of the first verdict of a fresh detector on each run, or None."""
    out: Verdicts = []
    for run in runs:
        detector = make()
        found = None
        for record in run.records:
            verdict = detector.observe(record.step, record)
            if verdict is not None:
                found = (verdict.step, verdict.kind)
                break
        out.append(found)
    return out


def combine(per_kind: dict[str, Verdicts]) -> Verdicts:
    """The composite's first verdict from each member's own first verdict (members observe
    every step independently; the earliest wins, ties go to the member listed first)."""
    kinds = list(per_kind)
    n = len(per_kind[kinds[0]]) if kinds else 0
    out: Verdicts = []
    for i in range(n):
        hits = [v for k in kinds if (v := per_kind[k][i]) is not None]
        out.append(min(hits, key=lambda v: v[0]) if hits else None)
    return out


@dataclass
class Metrics:
    exploded: int = 0
    setbacks: int = 0
    fine: int = 0
    """recovered + healthy runs: a verdict on one is a false flag."""
    flagged: int = 0
    rescued: int = 0
    """skip policy: exploded without intervention, not stopped, ended not exploded."""
    caught_setbacks: int = 0
    false_flags: int = 0
    to_nonfinite: int = 0
    before_nonfinite: int = 0
    label_rule: int = 0
    """verdicts on exploded runs at the label's own event (lead 0: the label's rule)."""
    lead_nonfinite: list[int] = field(default_factory=list)
    lead_blowup: list[int] = field(default_factory=list)
    lead_blowup_other: list[int] = field(default_factory=list)
    """leads before the blow-up of the verdicts that came before the label's event."""

    @property
    def recall(self) -> float:
        return _share(self.flagged + self.rescued, self.exploded)

    @property
    def false_flag_rate(self) -> float:
        return _share(self.false_flags, self.fine)

    @property
    def before_share(self) -> float:
        return _share(self.before_nonfinite, self.to_nonfinite)

    def row(self, name: str) -> list[Any]:
        rescued = f" +{self.rescued} rescued" if self.rescued else ""
        return [name, f"{self.exploded}/{self.setbacks}/{self.fine}",
                f"{_pct(self.recall)}{rescued}",
                f"{self.caught_setbacks}/{self.setbacks}",
                f"{_pct(self.false_flag_rate)} ({self.false_flags})",
                f"{_pct(self.before_share)} ({self.before_nonfinite}/{self.to_nonfinite})",
                _med(self.lead_nonfinite), _med(self.lead_blowup),
                f"{self.label_rule}/{self.flagged}", _med(self.lead_blowup_other)]


HEADERS = ["", "expl/setback/fine", "recall", "setbacks caught", "false flags",
           ">=1 step before NaN", "lead to NaN", "lead to blow-up",
           "at the label's event", "lead, other rules"]


def metrics(runs: Sequence[Run], verdicts: Sequence[tuple[int, str] | None],
            skip: bool = False) -> Metrics:
    m = Metrics()
    for run, verdict in zip(runs, verdicts, strict=True):
        if run.label in ("recovered", "healthy"):
            m.fine += 1
            m.false_flags += verdict is not None
            continue
        if run.label == "setback":
            m.setbacks += 1
            m.caught_setbacks += verdict is not None
            continue
        m.exploded += 1
        step = verdict[0] if verdict is not None else None
        if step is None:
            m.rescued += skip and run.skip_label not in ("exploded", "")
            continue
        m.flagged += 1
        if run.nonfinite_step is not None:
            m.to_nonfinite += 1
            m.before_nonfinite += step < run.nonfinite_step
            m.lead_nonfinite.append(run.nonfinite_step - step)
        assert run.blowup_step is not None
        lead = run.blowup_step - step
        m.lead_blowup.append(lead)
        if lead > 0:
            m.lead_blowup_other.append(lead)
        else:
            m.label_rule += 1
    return m


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def _share(k: int, n: int) -> float:
    return k / n if n else math.nan


def _med(values: list[int]) -> str:
    return "-" if not values else f"{median(values):g}"


# ---------------------------------------------------------------------------- tuning
GRID: dict[str, dict[str, Sequence[Any]]] = {
    "nonfinite": {"max_overflow_streak": (12, 32)},
    "ceiling": {"ratio": (1e2, 1e3, 1e4, 1e5)},
    "spike": {"z_threshold": (4.0, 6.0, 8.0), "patience": (3, 5), "min_ratio": (2.0, 5.0)},
    "median_ratio": {"ratio": (10.0, 20.0, 50.0), "patience": (3, 5)},
    "growth": {"min_ratio": (10.0, 30.0, 100.0), "min_slope": (0.1, 0.2)},
    "loss_divergence": {"regress": (0.5, 1.0), "patience": (3, 5),
                        "initial_factor": (10.0, None)},
}
"""Settings searched per member of the stop composite; the others keep their defaults."""
MAX_FALSE_FLAG_RATE = 0.01
START: dict[str, dict[str, Any]] = {
    "nonfinite": {"max_overflow_streak": 12}, "spike": {"min_ratio": 2.0},
    "median_ratio": {"patience": 3}, "growth": {"min_ratio": 30.0},
}
"""Where every search starts (the defaults before this corpus existed), so that a fold's
result never depends on values chosen with its held-out family in view."""


def defaults_of(kind: str) -> dict[str, Any]:
    """The shipped constructor defaults of a member of the stop composite."""
    import inspect

    params = inspect.signature(DEFAULT_DETECTORS[kind]).parameters
    return {name: p.default for name, p in params.items() if name != "self"}


def start_of(kind: str) -> dict[str, Any]:
    return {**defaults_of(kind), **START.get(kind, {})}


def grid_points(kind: str) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = [{}]
    for key, values in GRID.get(kind, {}).items():
        points = [{**p, key: v} for p in points for v in values]
    return [{**start_of(kind), **p} for p in points]


class Tuner:
    """Coordinate search over GRID; each member's verdicts are replayed once over every run
    and cached, so a fold (a subset of runs) is scored by indexing."""

    def __init__(self, runs: Sequence[Run]) -> None:
        self.runs = runs
        self._cache: dict[tuple[str, str], Verdicts] = {}

    def verdicts(self, kind: str, params: dict[str, Any]) -> Verdicts:
        key = (kind, json.dumps(params, sort_keys=True))
        if key not in self._cache:
            cls = DEFAULT_DETECTORS[kind]
            self._cache[key] = first_verdicts(lambda: cls(**params), self.runs)
        return self._cache[key]

    def composite(self, chosen: dict[str, dict[str, Any]], idx: Sequence[int]) -> Verdicts:
        per_kind = {k: [self.verdicts(k, chosen[k])[i] for i in idx] for k in DEFAULT_DETECTORS}
        return combine(per_kind)

    def tune(self, idx: Sequence[int], rounds: int = 2) -> dict[str, dict[str, Any]]:
        runs = [self.runs[i] for i in idx]
        chosen = {kind: start_of(kind) for kind in DEFAULT_DETECTORS}
        for _ in range(rounds):
            for kind in GRID:
                best: tuple[tuple[float, ...], dict[str, Any]] | None = None
                for params in grid_points(kind):
                    trial = {**chosen, kind: params}
                    score = objective(metrics(runs, self.composite(trial, idx)),
                                      params == start_of(kind))
                    if best is None or score > best[0]:
                        best = (score, params)
                assert best is not None
                chosen[kind] = best[1]
        return chosen


def objective(m: Metrics, is_default: bool) -> tuple[Any, ...]:
    """Lexicographic, larger is better: within the false-flag budget, recall, the share
    flagged before NaN, fewer false flags, the lead before the blow-up; ties keep the
    starting point."""
    within = m.false_flag_rate <= MAX_FALSE_FLAG_RATE
    lead = median(m.lead_blowup) if m.lead_blowup else 0.0
    return (within, round(m.recall, 6), round(_nz(m.before_share), 6), -m.false_flags,
            lead, is_default)


def _nz(x: float) -> float:
    return 0.0 if x != x else x


def _changes(chosen: dict[str, dict[str, Any]]) -> str:
    """The chosen values that differ from the starting point; '= shipped' when all are the
    shipped defaults."""
    out = []
    for kind, params in chosen.items():
        old = start_of(kind)
        out += [f"{kind}.{a}={v}" for a, v in params.items() if v != old[a]]
    same = all(params == defaults_of(kind) for kind, params in chosen.items())
    return (", ".join(out) or "starting point kept") + (" (= shipped)" if same else "")


# ---------------------------------------------------------------------------- report
def describe(runs: Sequence[Run]) -> None:
    rows = []
    for family in (*FAMILIES, None):
        sub = [r for r in runs if family is None or r.spec.family == family]
        counts = [sum(r.label == o for r in sub) for o in OUTCOMES]
        norms = [r.global_norm for run in sub for r in run.records
                 if math.isfinite(r.global_norm) and r.global_norm > 0]
        rows.append([family or "all", len(sub), *counts,
                     sum(r.nonfinite_step is not None for r in sub),
                     f"{min(norms, default=math.nan):.2g}..{max(norms, default=math.nan):.2g}",
                     f"{sum(r.seconds for r in sub):.0f}"])
    print(table(["family", "runs", *OUTCOMES, "reach NaN/inf", "grad norms", "train s"], rows))


def by_family(runs: Sequence[Run], verdicts: Verdicts, *, skip: bool = False,
              families: Sequence[str] = FAMILIES) -> list[list[Any]]:
    rows = []
    for family in families:
        idx = [i for i, r in enumerate(runs) if r.spec.family == family]
        rows.append(metrics([runs[i] for i in idx], [verdicts[i] for i in idx], skip)
                    .row(family))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 runs per family: a smoke test")
    parser.add_argument("--per-family", type=int, default=50, help="runs per family (50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the config list")
    parser.add_argument("--refresh", action="store_true", help="re-run, ignore the cache")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    per_family = 6 if args.quick else args.per_family
    if per_family < 1 or args.workers < 1:
        parser.error("--per-family and --workers must be >= 1")
    start = time.perf_counter()
    specs = make_corpus(per_family, args.seed)
    free = load_runs(specs, "free", refresh=args.refresh, workers=args.workers)
    skip = load_runs(specs, "skip", refresh=args.refresh, workers=args.workers)
    broken = [f for f in (*free, *skip) if "error" in f]
    for f in broken:
        print(f"  left out, the run raised: {f['spec']['family']} {f['spec']['config']}: "
              f"{f['error'][:120]}")
    runs = [make_run(f, s) for f, s in zip(free, skip, strict=True)
            if "error" not in f and "error" not in s]
    print(f"\n{len(runs)} runs, {STEPS} steps each; labels from each run's own loss, trained "
          "to its end with no detector:")
    describe(runs)

    # ---- on_spike: stop, shipped defaults (replayed)
    shipped = first_verdicts(lambda: default_detector(on_spike="stop"), runs)
    everything = range(len(runs))
    # ---- leave one family out
    tuner = Tuner(runs)
    held_out: Verdicts = [None] * len(runs)
    print("\nLeave-one-family-out tuning of the stop policy (tuned on 8 families, scored on "
          "the 9th):")
    for family in FAMILIES:
        train_idx = [i for i in everything if runs[i].spec.family != family]
        test_idx = [i for i in everything if runs[i].spec.family == family]
        chosen = tuner.tune(train_idx)
        for i, v in zip(test_idx, tuner.composite(chosen, test_idx), strict=True):
            held_out[i] = v
        print(f"  without {family}: {_changes(chosen)}")
    builtin_idx = [i for i in everything if runs[i].spec.family in BUILTIN]
    new_idx = [i for i in everything if runs[i].spec.family in NEW]
    on_builtins = tuner.tune(builtin_idx)
    print(f"  on the built-ins only: {_changes(on_builtins)}")
    builtin_tuned = tuner.composite(on_builtins, new_idx)
    all_tuned = tuner.tune(list(everything))
    print(f"  on all nine (the tuned split): {_changes(all_tuned)}")
    skip_verdicts: Verdicts = [r.skip_verdict for r in runs]

    def sub(idx: Sequence[int], v: Verdicts, skip_mode: bool = False) -> Metrics:
        return metrics([runs[i] for i in idx], [v[i] for i in idx], skip_mode)

    print("\nSummary (exploded / setback / recovered+healthy runs; recall counts a run the "
          "skip policy trained through to a good end as rescued):")
    rows = [
        sub(everything, held_out).row("stop, each family held out (unseen)"),
        sub(everything, shipped).row("stop, shipped defaults (tuned split)"),
        metrics([runs[i] for i in new_idx], builtin_tuned).row(
            "stop, tuned on built-ins -> new families"),
        sub(new_idx, shipped).row("stop, shipped defaults, new families"),
        sub(everything, skip_verdicts, True).row("skip (untuned), all families"),
        sub(new_idx, skip_verdicts, True).row("skip (untuned), new families"),
    ]
    print(table(HEADERS, rows))
    print("\nstop policy, each family scored with thresholds tuned without it:")
    print(table(HEADERS, by_family(runs, held_out)))
    print("\nskip policy (live runs; its thresholds were never tuned on this corpus):")
    print(table(HEADERS, by_family(runs, skip_verdicts, skip=True)))

    kinds: dict[str, list[int]] = {}
    for policy, verdicts in (("stop", shipped), ("skip", skip_verdicts)):
        for run, v in zip(runs, verdicts, strict=True):
            if v is not None:
                kinds.setdefault(f"{policy}: {v[1]}", [0, 0, 0])[
                    0 if run.label == "exploded" else 1 if run.label == "setback" else 2] += 1
    print("\nWhich rule gave the verdict (exploded / setback / false flag):")
    print(table(["policy: rule", "exploded", "setback", "false flag"],
                [[k, *v] for k, v in sorted(kinds.items())]))

    print("\nFalse flags of the skip policy and of the shipped stop policy:")
    for policy, verdicts in (("stop", shipped), ("skip", skip_verdicts)):
        for run, v in zip(runs, verdicts, strict=True):
            if v is not None and run.label in ("recovered", "healthy"):
                print(f"  {policy}: {v[1]} at step {v[0]} on a {run.label} run "
                      f"{run.spec.run_id} {run.spec.family} {run.spec.args} "
                      f"{run.spec.config}")
    print(f"\nTotal {time.perf_counter() - start:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
