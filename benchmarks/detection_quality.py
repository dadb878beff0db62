"""Detection quality of the explosion detectors on a labelled corpus of real training runs.

    python benchmarks/detection_quality.py             # full corpus (cached after the first run)
    python benchmarks/detection_quality.py --quick     # ~40 runs: a smoke test
    python benchmarks/detection_quality.py --refresh   # re-run the corpus, ignore the cache
    python benchmarks/detection_quality.py --tune      # also search the detector settings

Every run of the corpus trains to completion under ``NullDetector`` (nothing stops it; the
guard still records the trace), then is labelled by its outcome: *exploded* when the loss
turns non-finite or rises above 10x its initial value (the step-0 loss) at any point, healthy
otherwise. The detectors are replayed over the recorded traces, exactly as the guard feeds
them, and scored: recall on exploded runs, false-flag rate on healthy runs, lead time, and
the share of explosions flagged at least one step before the loss turns non-finite.

The corpus is a seeded list of configs (so the figures are reproducible): the four built-in
workloads at CPU-cheap sizes, lr from stable to explosive, sgd / sgd_nesterov / adam, norm
clipping or none, warm-up or none, fp32 / bf16 / fp16, and several init schemes. Traces are
cached under ``benchmarks/.cache/`` (git-ignored), so re-scoring and tuning replay instantly.
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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from _common import ROOT, SMALL, cache_dir, median, table

from stability.detectors import (
    DEFAULT_DETECTORS,
    Detector,
    NullDetector,
    default_detector,
    records_from_trace,
)
from stability.records import StepRecord

CORPUS_VERSION = 1
"""Bump when the corpus generator changes: old caches are then ignored."""
STEPS = 250
EXPLODE_FACTOR = 10.0
WORKLOADS = ("deep_mlp", "rnn_adding", "transformer_lm", "cnn_digits")

# lr near the edge of stability per (workload, optimizer family), found by a scan at the SMALL
# sizes, 200 steps, default init, fp32, no clipping, no warm-up (sgd with momentum 0.9).
# Sampled lrs span ref x 10**[-1.5, 0.7]: mostly stable, about a third explosive.
LR_REF = {
    ("deep_mlp", "sgd"): 2.0, ("deep_mlp", "adam"): 0.05,
    ("rnn_adding", "sgd"): 0.25, ("rnn_adding", "adam"): 0.3,
    ("transformer_lm", "sgd"): 2.0, ("transformer_lm", "adam"): 0.5,
    ("cnn_digits", "sgd"): 3.0, ("cnn_digits", "adam"): 0.2,
}
WORKLOAD_CHOICES: dict[str, dict[str, Sequence[Any]]] = {
    "deep_mlp": {"depth": (8, 12, 16), "activation": ("relu", "tanh")},
    "rnn_adding": {"seq_len": (20, 30, 40)},
    "transformer_lm": {"norm": ("post", "pre")},
    "cnn_digits": {},
}
INITS = ("default", "default", "xavier_normal", "kaiming_normal", "orthogonal", "normal")


@dataclass(frozen=True)
class RunSpec:
    """One run of the corpus: a workload, its arguments, a StabilityConfig and a seed."""

    run_id: int
    workload: str
    workload_args: dict[str, Any]
    config: dict[str, Any]
    seed: int
    steps: int = STEPS


def make_corpus(n: int, seed: int = 0) -> list[RunSpec]:
    """``n`` run specs, the workloads in turn, every other choice drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(n):
        workload = WORKLOADS[i % len(WORKLOADS)]
        args = dict(SMALL[workload])
        for key, choices in WORKLOAD_CHOICES[workload].items():
            args[key] = choices[int(rng.integers(len(choices)))]
        optimizer = str(rng.choice(["sgd", "sgd_nesterov", "adam"], p=[0.35, 0.2, 0.45]))
        family = "adam" if optimizer == "adam" else "sgd"
        lr = LR_REF[(workload, family)] * 10 ** rng.uniform(-1.5, 0.7)
        config: dict[str, Any] = {"optimizer": optimizer, "lr": float(f"{lr:.3g}")}
        if optimizer == "sgd" and rng.random() < 0.3:
            config["momentum"] = 0.0
            config["lr"] = float(f"{5 * lr:.3g}")  # no momentum: a 10x smaller effective step
        if rng.random() < 0.4:
            config["clip_method"] = "norm"
            config["clip_threshold"] = float(f"{10 ** rng.uniform(-0.6, 0.7):.2g}")
        if rng.random() < 0.4:
            config["warmup_steps"] = int(rng.integers(10, 120))
        if rng.random() < 0.3:
            config["schedule"] = "cosine"
        init = str(rng.choice(INITS))
        if init != "default":
            config["init"] = init
            if init == "normal":
                config["init_std"] = float(rng.choice([0.02, 0.05, 0.1]))
        precision = str(rng.choice(["fp32", "bf16", "fp16"], p=[0.7, 0.15, 0.15]))
        if precision == "fp16" and workload == "cnn_digits":
            precision = "bf16"  # fp16 convolutions on the CPU are ~20x slower than fp32
        if precision != "fp32":
            config["precision"] = precision
        specs.append(RunSpec(i, workload, args, config, int(rng.integers(1000))))
    return specs


# ---------------------------------------------------------------------------- running
def run_spec(spec: RunSpec) -> dict[str, Any]:
    """Train one spec to completion (NullDetector: never stopped) and return its trace."""
    import torch

    from stability.trainer import train

    torch.set_num_threads(1)
    start = time.perf_counter()
    result = train(spec.workload, spec.config, steps=spec.steps, detector=NullDetector(),
                   seed=spec.seed, workload_args=spec.workload_args)
    # plain data only: the cache must load whether this file runs as a script or a module
    return {"spec": asdict(spec), "trace": result.trace,
            "seconds": time.perf_counter() - start}


def spec_key(spec: RunSpec) -> str:
    text = json.dumps(asdict(spec), sort_keys=True) + f"v{CORPUS_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_fingerprint() -> str:
    """A hash of everything that shapes a recorded trace: torch's version and the sources of
    ``stability/`` but the detectors, the diagnosis and the plots (they only read traces)."""
    import torch

    digest = hashlib.sha256(torch.__version__.encode())
    package = ROOT / "stability"
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith("detectors/") or rel in ("diagnose.py", "plots.py"):
            continue
        digest.update(rel.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def load_corpus(specs: Sequence[RunSpec], *, refresh: bool, workers: int
                ) -> list[dict[str, Any]]:
    """The recorded runs of ``specs``: from the cache, else trained now and added to it.

    The cache maps each spec's hash to its run, so ``--quick`` (the first 40 specs of the same
    seeded list) reuses a full corpus and a changed spec is re-run alone. Its file is named by
    :func:`code_fingerprint`: editing the guard, a workload or the clipping re-runs it all.
    """
    fingerprint = code_fingerprint()
    path = cache_dir() / f"detection-corpus-{fingerprint}.pkl"
    cached: dict[str, dict[str, Any]] = {}
    if path.exists():
        with path.open("rb") as fh:
            cached = pickle.load(fh)
    elif any(cache_dir().glob("detection-corpus-*.pkl")):
        print("corpus: stability/ or torch changed since the cached traces: re-training")
    keys = [spec_key(s) for s in specs]
    todo = [s for s, k in zip(specs, keys, strict=True) if refresh or k not in cached]
    if todo:
        print(f"corpus: training {len(todo)} of {len(specs)} runs with {workers} worker(s)"
              " ...", flush=True)
        start = time.perf_counter()
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for k, run in enumerate(pool.map(run_spec, todo, chunksize=2), 1):
                    cached[spec_key(RunSpec(**run["spec"]))] = run
                    _progress(k, len(todo), start)
        else:
            for k, spec in enumerate(todo, 1):
                cached[spec_key(spec)] = run_spec(spec)
                _progress(k, len(todo), start)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            pickle.dump(cached, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
        for stale in cache_dir().glob("detection-corpus-*.pkl"):
            if stale != path:
                stale.unlink()
        print(f"corpus: {len(todo)} runs trained in {time.perf_counter() - start:.0f} s, "
              f"cached in {path}")
    else:
        print(f"corpus: {len(specs)} runs from the cache {path} (--refresh to re-run)")
    return [cached[k] for k in keys]


def _progress(k: int, n: int, start: float) -> None:
    if k % 20 == 0 or k == n:
        print(f"  {k}/{n} runs, {time.perf_counter() - start:.0f} s", flush=True)


# ---------------------------------------------------------------------------- labels
@dataclass
class Run:
    """A recorded run, its label and its records (built once, replayed many times)."""

    spec: RunSpec
    records: list[StepRecord]
    exploded: bool
    nonfinite_step: int | None
    """first step whose loss is inf or NaN."""
    blowup_step: int | None
    """first step whose loss is non-finite or above 10x the step-0 loss (the label's event)."""
    seconds: float = 0.0


def label(run: dict[str, Any]) -> Run:
    trace = run["trace"]
    loss = trace["loss"].to_numpy(np.float64)
    initial = loss[0]
    nonfinite = ~np.isfinite(loss)
    with np.errstate(invalid="ignore"):
        blown = nonfinite | (loss > EXPLODE_FACTOR * abs(initial))
    first_nonfinite = int(np.argmax(nonfinite)) if nonfinite.any() else None
    first_blown = int(np.argmax(blown)) if blown.any() else None
    return Run(RunSpec(**run["spec"]), records_from_trace(trace), first_blown is not None,
               first_nonfinite, first_blown, run.get("seconds", 0.0))


# ---------------------------------------------------------------------------- scoring
Make = Callable[[], Detector]


def first_verdicts(make: Make, runs: Sequence[Run]) -> list[tuple[int, str] | None]:
    """(step, kind) of the first verdict of a fresh detector on each run, or None."""
    out: list[tuple[int, str] | None] = []
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


def combine(per_kind: dict[str, list[tuple[int, str] | None]]) -> list[tuple[int, str] | None]:
    """The composite's first verdict from each member's own first verdict.

    Every member observes every step and keeps its own state, so the composite fires at the
    earliest member verdict; on a tie the member listed first wins.
    """
    kinds = list(per_kind)
    n = len(per_kind[kinds[0]]) if kinds else 0
    out: list[tuple[int, str] | None] = []
    for i in range(n):
        hits = [v for k in kinds if (v := per_kind[k][i]) is not None]
        out.append(min(hits, key=lambda v: v[0]) if hits else None)
    return out


@dataclass
class Metrics:
    exploded: int
    healthy: int
    flagged: int
    """exploded runs with a verdict (recall numerator)."""
    false_flags: int
    to_nonfinite: int
    """exploded runs whose loss turns non-finite."""
    before_nonfinite: int
    """... of which flagged at least one step before the first non-finite loss."""
    at_blowup: int
    """exploded runs flagged at or before the label's event (non-finite or > 10x loss)."""
    lead_nonfinite: list[int]
    lead_blowup: list[int]

    @property
    def recall(self) -> float:
        return self.flagged / self.exploded if self.exploded else math.nan

    @property
    def false_flag_rate(self) -> float:
        return self.false_flags / self.healthy if self.healthy else math.nan

    @property
    def before_share(self) -> float:
        return self.before_nonfinite / self.to_nonfinite if self.to_nonfinite else math.nan

    def row(self, name: str) -> list[Any]:
        return [name, f"{self.exploded}/{self.healthy}", _pct(self.recall),
                f"{_pct(self.false_flag_rate)} ({self.false_flags})",
                f"{_pct(self.before_share)} ({self.before_nonfinite}/{self.to_nonfinite})",
                _med(self.lead_nonfinite), _pct(_share(self.at_blowup, self.exploded)),
                _med(self.lead_blowup)]


HEADERS = ["", "expl/healthy", "recall", "false flags", "flagged >=1 step before NaN",
           "lead to NaN (median)", "flagged by blow-up", "lead to blow-up (median)"]


def metrics(runs: Sequence[Run], verdicts: Sequence[tuple[int, str] | None]) -> Metrics:
    m = Metrics(0, 0, 0, 0, 0, 0, 0, [], [])
    for run, verdict in zip(runs, verdicts, strict=True):
        if not run.exploded:
            m.healthy += 1
            m.false_flags += verdict is not None
            continue
        m.exploded += 1
        step = verdict[0] if verdict is not None else None
        m.flagged += step is not None
        if run.nonfinite_step is not None:
            m.to_nonfinite += 1
            if step is not None and step < run.nonfinite_step:
                m.before_nonfinite += 1
            if step is not None:
                m.lead_nonfinite.append(run.nonfinite_step - step)
        if step is not None and run.blowup_step is not None:
            m.at_blowup += step <= run.blowup_step
            m.lead_blowup.append(run.blowup_step - step)
    return m


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def _share(k: int, n: int) -> float:
    return k / n if n else math.nan


def _med(values: list[int]) -> str:
    return "-" if not values else f"{median(values):g}"


# ---------------------------------------------------------------------------- tuning
GRID: dict[str, dict[str, Sequence[Any]]] = {
    "nonfinite": {"max_overflow_streak": (6, 12, 24)},
    "ceiling": {"max_norm": (1e3, 3e3, 1e4, 3e4, 1e5)},
    "spike": {"z_threshold": (4.0, 6.0, 8.0), "patience": (1, 2, 3, 5),
              "min_ratio": (2.0, 5.0, 10.0), "warmup": (10, 25)},
    "median_ratio": {"ratio": (5.0, 10.0, 20.0, 50.0), "patience": (1, 2, 3, 5),
                     "warmup": (8, 16, 32)},
    "growth": {"min_slope": (0.1, 0.2, 0.3), "min_ratio": (5.0, 10.0, 20.0, 30.0, 50.0),
               "patience": (2, 3, 5), "warmup": (16, 32), "window": (10, 20)},
    "loss_divergence": {"initial_factor": (5.0, 10.0, None), "patience": (1, 2, 3, 5),
                        "smoothing": (0.9, 0.98), "warmup": (0, 50)},
}
"""Settings searched per detector (``--tune``); the others keep their defaults."""
MAX_FALSE_FLAG_RATE = 0.01


def defaults_of(kind: str) -> dict[str, Any]:
    """The constructor defaults of one member of the default composite."""
    import inspect

    params = inspect.signature(DEFAULT_DETECTORS[kind]).parameters
    return {name: p.default for name, p in params.items() if name != "self"}


def grid_points(kind: str) -> list[dict[str, Any]]:
    keys = list(GRID[kind])
    points = [{}]
    for key in keys:
        points = [{**p, key: v} for p in points for v in GRID[kind][key]]
    return [{**defaults_of(kind), **p} for p in points]


def objective(m: Metrics, is_default: bool) -> tuple[float, ...]:
    """Lexicographic, larger is better: within the false-flag budget, then recall, then the
    share flagged before NaN, then fewer false flags, then the lead; ties keep the default."""
    within = m.false_flag_rate <= MAX_FALSE_FLAG_RATE
    lead = median(m.lead_nonfinite) if m.lead_nonfinite else 0.0
    return (within, round(m.recall, 6), round(m.before_share, 6), -m.false_flags,
            _share(m.at_blowup, m.exploded), lead, is_default)


def tune(runs: Sequence[Run], rounds: int = 2) -> dict[str, dict[str, Any]]:
    """Coordinate search over GRID: each detector in turn takes the setting that maximises
    the composite's objective with the others held fixed; ``rounds`` passes."""
    chosen = {kind: defaults_of(kind) for kind in DEFAULT_DETECTORS}
    cache: dict[tuple[str, str], list[tuple[int, str] | None]] = {}

    def verdicts(kind: str, params: dict[str, Any]) -> list[tuple[int, str] | None]:
        key = (kind, json.dumps(params, sort_keys=True))
        if key not in cache:
            cls = DEFAULT_DETECTORS[kind]
            cache[key] = first_verdicts(lambda: cls(**params), runs)
        return cache[key]

    for _ in range(rounds):
        for kind in DEFAULT_DETECTORS:
            best: tuple[tuple[float, ...], dict[str, Any]] | None = None
            for params in grid_points(kind):
                per_kind = {k: verdicts(k, params if k == kind else chosen[k])
                            for k in DEFAULT_DETECTORS}
                score = objective(metrics(runs, combine(per_kind)),
                                  params == defaults_of(kind))
                if best is None or score > best[0]:
                    best = (score, params)
            assert best is not None
            chosen[kind] = best[1]
    return chosen


# ---------------------------------------------------------------------------- report
DECISIONS: list[tuple[str, dict[str, Any], str]] = [
    ("previous defaults", {"growth.min_ratio": 5.0, "median_ratio.warmup": 16,
                           "loss_divergence": {"warmup": 50, "smoothing": 0.9,
                                               "initial_factor": None}},
     "tuned on synthetic traces only (but with today's fp16 NaN-loss rule)"),
    ("loss: no from-start rule", {"loss_divergence.initial_factor": None},
     "the early flags come from the loss passing 10x its start"),
    ("loss: initial_factor 5", {"loss_divergence.initial_factor": 5.0},
     "5x the start is a normal bad batch early on"),
    ("loss: patience 1", {"loss_divergence.patience": 1},
     "losses trained towards 0 put single batches at 10x the best"),
    ("loss: smoothing 0.9", {"loss_divergence.smoothing": 0.9},
     "a fast EMA dips with lucky batches: the best is too low"),
    ("growth: min_ratio 5", {"growth.min_ratio": 5.0},
     "norms rise 5-10x as the lr warms up or a small init grows"),
    ("growth: min_ratio 10", {"growth.min_ratio": 10.0}, ""),
    ("growth: min_ratio 20", {"growth.min_ratio": 20.0}, "still at the edge"),
    ("median_ratio: warmup 16", {"median_ratio.warmup": 16},
     "a small init moves the norm by orders of magnitude early on"),
    ("ceiling: 1e3", {"ceiling.max_norm": 1e3},
     "one more early flag here, but an absolute norm does not transfer to big models"),
    ("spike: z 3", {"spike.z_threshold": 3.0}, "noisy healthy norms reach z 3"),
    ("no spike/median/growth", {"spike": None, "median_ratio": None, "growth": None},
     "what the norm-statistics detectors add"),
    ("no loss_divergence", {"loss_divergence": None},
     "gradient-side detectors and non-finite checks alone"),
]
"""Alternatives to the chosen defaults, each scored as a whole composite: the 'why'."""


def _subset(runs: Sequence[Run], verdicts: Sequence[tuple[int, str] | None],
            keep: Callable[[Run], bool]) -> Metrics:
    idx = [i for i, r in enumerate(runs) if keep(r)]
    return metrics([runs[i] for i in idx], [verdicts[i] for i in idx])


def report(runs: Sequence[Run], verdicts: Sequence[tuple[int, str] | None]) -> Metrics:
    overall = metrics(runs, verdicts)
    rows = [overall.row("all runs")]
    for workload in WORKLOADS:
        rows.append(_subset(runs, verdicts, lambda r, w=workload: r.spec.workload == w
                            ).row(workload))
    rows.append(_subset(runs, verdicts, lambda r: not r.exploded or (r.blowup_step or 0) > 5
                        ).row("blow-up after step 5"))
    rows.append(_subset(runs, verdicts, lambda r: not r.exploded or (r.blowup_step or 0) <= 5
                        ).row("blow-up by step 5"))
    rows.append(metrics(half(runs, 0), _half(runs, verdicts, 0)).row("tuning half"))
    rows.append(metrics(half(runs, 1), _half(runs, verdicts, 1)).row("held-out half"))
    print(table(HEADERS, rows))
    return overall


def half(runs: Sequence[Run], which: int) -> list[Run]:
    """Half 0 (tuning) or 1 (held out): alternate blocks of four runs, one per workload."""
    return [r for r in runs if (r.spec.run_id // len(WORKLOADS)) % 2 == which]


def _half(runs: Sequence[Run], verdicts: Sequence[Any], which: int) -> list[Any]:
    return [v for r, v in zip(runs, verdicts, strict=True)
            if (r.spec.run_id // len(WORKLOADS)) % 2 == which]


def report_kinds(runs: Sequence[Run], verdicts: Sequence[tuple[int, str] | None]) -> None:
    """Each member of the default composite alone, and which member gave the verdict."""
    won: dict[str, list[int]] = {}
    for run, verdict in zip(runs, verdicts, strict=True):
        if verdict is not None:
            kind = "nonfinite" if verdict[1] == "overflow_streak" else verdict[1]
            won.setdefault(kind, [0, 0])[0 if run.exploded else 1] += 1
    rows = []
    for kind, cls in DEFAULT_DETECTORS.items():
        alone = metrics(runs, first_verdicts(cls, runs))
        first = won.get(kind, [0, 0])
        rows.append([*alone.row(kind)[:6], f"{first[0]} / {first[1]}"])
    print(table([*HEADERS[:6], "composite verdicts (expl / healthy)"], rows))


def decisions(runs: Sequence[Run], chosen: Metrics) -> list[list[Any]]:
    """[name, recall, false flags, flagged >=1 step before NaN, lead, why] per alternative."""
    rows = [["chosen defaults", _pct(chosen.recall), chosen.false_flags,
             f"{chosen.before_nonfinite}/{chosen.to_nonfinite}", _med(chosen.lead_nonfinite),
             ""]]
    for name, overrides, why in DECISIONS:
        m = metrics(runs, first_verdicts(lambda o=overrides: default_detector(o), runs))
        rows.append([name, _pct(m.recall), m.false_flags,
                     f"{m.before_nonfinite}/{m.to_nonfinite}", _med(m.lead_nonfinite), why])
    return rows


DECISION_HEADERS = ["composite", "recall", "false flags", ">=1 step before NaN",
                    "lead to NaN (median)", "why it matters"]


def describe_corpus(runs: Sequence[Run]) -> None:
    rows = []
    for workload in (*WORKLOADS, None):
        sub = [r for r in runs if workload is None or r.spec.workload == workload]
        exploded = [r for r in sub if r.exploded]
        rows.append([workload or "all", len(sub), len(exploded),
                     sum(r.nonfinite_step is not None for r in exploded),
                     sum((r.blowup_step or 0) <= 5 for r in exploded),
                     f"{max_healthy_norm(sub):.3g}", f"{sum(r.seconds for r in sub):.0f}"])
    print(table(["workload", "runs", "exploded", "reach NaN/inf", "blow up by step 5",
                 "max healthy norm", "train s"], rows))


def max_healthy_norm(runs: Sequence[Run]) -> float:
    """The largest finite global norm of any healthy run (fp16 skipped steps left out)."""
    norms = [r.global_norm for run in runs if not run.exploded for r in run.records
             if not r.overflow and math.isfinite(r.global_norm)]
    return max(norms, default=math.nan)


WHY = {
    "nonfinite": "a NaN/inf loss or gradient is always an explosion; an fp16 step the scaler "
                 "skipped is only counted, unless its loss itself is non-finite (the forward "
                 "overflowed: no loss scale undoes that); 12 overflows in a row mean the scale "
                 "cannot recover.",
    "ceiling": "an absolute backstop that needs no warm-up, ~50x the largest norm of any "
               "healthy run here ({max_norm:.3g}); lower would flag these small models "
               "earlier, but an absolute norm does not transfer to large ones.",
    "spike": "unchanged: z 4 over the EMA of the log-norm, 3 steps in a row, at least 2x; no "
             "false flags, rarely first (these explosions outrun its patience).",
    "median_ratio": "warm-up 16 -> 32: a small init moves the norm by orders of magnitude in "
                    "the first ~30 steps; the ceiling and the loss rule cover that phase.",
    "growth": "min_ratio 5 -> 30: healthy norms rise 5-20x above their floor while the lr "
              "warms up, a small init grows or Adam runs hot; 30x the floor with x1.1/step "
              "growth is not healthy.",
    "loss_divergence": "new rule *from the start*: a loss 10x its first value flags at once "
                       "(the model is worse than at init; no warm-up needed). *From the "
                       "best*: 10x the best EMA (0.98) for 3 steps, from step 0; patience 1 "
                       "or a fast EMA false-flags runs whose loss trained towards 0.",
}
"""Why each default is what it is; the figures are in the alternatives table."""


def readme_block(m: Metrics, runs: Sequence[Run], alternatives: list[list[Any]]) -> str:
    lines = [
        "### Detector defaults and why",
        "",
        f"Measured by `python benchmarks/detection_quality.py`: {len(runs)} seeded CPU runs "
        "of the four built-in workloads at small sizes (lr from stable to explosive; sgd, "
        "sgd_nesterov, adam; norm clipping or none; warm-up or none; fp32, bf16, fp16; five "
        f"init schemes), {STEPS} steps each, never stopped, then the detectors replayed over "
        "the recorded traces. A run is *exploded* when its loss turns non-finite or exceeds "
        f"10x its step-0 value: {m.exploded} exploded, {m.healthy} healthy.",
        "",
        f"- recall {_pct(m.recall)}; false flags {_pct(m.false_flag_rate)} "
        f"({m.false_flags} of {m.healthy} healthy runs)",
        f"- {_pct(m.before_share)} of the runs that reach NaN/inf are flagged at least one "
        f"step before ({m.before_nonfinite} of {m.to_nonfinite}); median lead "
        f"{_med(m.lead_nonfinite)} steps",
        "- the loss rule *10x the first loss* is the label itself, so recall is partly by "
        "construction; its value is timing (the loss crosses 10x steps before it turns NaN)",
        "",
        "| detector | defaults | why |",
        "|---|---|---|",
    ]
    for kind in DEFAULT_DETECTORS:
        args = ", ".join(f"{a}={v:g}" if isinstance(v, float) else f"{a}={v}"
                         for a, v in defaults_of(kind).items())
        why = WHY[kind].format(max_norm=max_healthy_norm(runs))
        lines.append(f"| `{kind}` | {args} | {why} |")
    lines += ["", "One change at a time, the whole composite rescored on the corpus:", "",
              "| composite | recall | false flags | flagged >=1 step before NaN |",
              "|---|---|---|---|"]
    lines += [f"| {name} | {recall} | {ff} | {before} |"
              for name, recall, ff, before, _lead, _why in alternatives]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 runs: a smoke test")
    parser.add_argument("--runs", type=int, default=320, help="corpus size (default 320)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the config list")
    parser.add_argument("--refresh", action="store_true", help="re-run, ignore the cache")
    parser.add_argument("--tune", action="store_true",
                        help="coordinate search of GRID on the tuning half")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="training processes (default: 2, or 1 on one core)")
    args = parser.parse_args(argv)
    n = 40 if args.quick else args.runs
    if n < 1 or args.workers < 1:
        parser.error(f"--runs and --workers must be >= 1; got {n} and {args.workers}.")
    specs = make_corpus(n, args.seed)
    runs = [label(r) for r in load_corpus(specs, refresh=args.refresh, workers=args.workers)]
    print()
    describe_corpus(runs)

    print("\nDefault composite (default_detector()) replayed over every trace:")
    verdicts = first_verdicts(default_detector, runs)
    overall = report(runs, verdicts)
    for run, verdict in zip(runs, verdicts, strict=True):
        if run.exploded != (verdict is not None):
            what = (f"false flag ({verdict[1]} at step {verdict[0]})" if verdict else
                    f"missed (blow-up at step {run.blowup_step})")
            print(f"  {what}: run {run.spec.run_id} {run.spec.workload} {run.spec.config}")
    print("\nEach detector alone (its own defaults), and which one gave the composite verdict:")
    report_kinds(runs, verdicts)
    print("\nThe chosen defaults against alternatives (whole composite, one change each):")
    alternatives = decisions(runs, overall)
    print(table(DECISION_HEADERS, alternatives, left=(0, 5)))

    if args.tune:
        start = time.perf_counter()
        tuned = tune(half(runs, 0))
        print(f"\n--tune: coordinate search on the tuning half "
              f"({time.perf_counter() - start:.0f} s):")
        for kind in DEFAULT_DETECTORS:
            old = defaults_of(kind)
            changes = [f"{a} {old[a]} -> {v}" for a, v in tuned[kind].items() if v != old[a]]
            print(f"  {kind}: {', '.join(changes) or 'defaults kept'}")
        per_kind = {k: first_verdicts(lambda k=k: DEFAULT_DETECTORS[k](**tuned[k]), runs)
                    for k in DEFAULT_DETECTORS}
        report(runs, combine(per_kind))

    print("\nChosen defaults (the constructor defaults of each detector) and why:")
    for kind in DEFAULT_DETECTORS:
        print(f"  {kind}: " + ", ".join(f"{a}={v}" for a, v in defaults_of(kind).items()))
        print(f"      {WHY[kind].format(max_norm=max_healthy_norm(runs))}")
    print("\n" + "-" * 72 + "\n" + readme_block(overall, runs, alternatives) + "\n"
          + "-" * 72)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
