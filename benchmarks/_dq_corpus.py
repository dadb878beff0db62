"""The detection corpus: run specs, training them (cached), and each run's label.

Used by ``benchmarks/detection_quality.py``. Every spec is trained twice, each time to its last
step with no detector (``NullDetector``): ``free`` (``on_spike: stop``: only non-finite updates
are dropped; the label comes from this run) and ``skip`` (``on_spike: skip``: the guard drops
spiking updates on device). The guard's skip decision never depends on the detector, so
replaying a skip composite over the ``skip`` trace gives exactly the verdict a live run would
have stopped at, and the trace after it says what the run would have become without a stop.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, SMALL, cache_dir

from stability.detectors import NullDetector, records_from_trace
from stability.records import StepRecord

CORPUS_VERSION = 3
"""Bump when the corpus generator changes: old caches are then ignored."""
STEPS = 250
EXPLODE_FACTOR = 10.0
BUILTIN = ("deep_mlp", "rnn_adding", "transformer_lm", "cnn_digits")
NEW = ("scaled_mlp", "teacher", "faulty_mlp", "gated_rnn", "attn_stack", "attn_spike")
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
    ("attn_spike", "sgd"): 1.5, ("attn_spike", "adam"): 0.05,
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
    "attn_spike": {"qk_norm": (False, False, True), "final_norm": (True, False),
                   "z_loss": (0.0, 0.0, 1e-4), "half": (4, 6), "vocab": (16,)},
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
    """``per_family`` run specs per family, every choice drawn from ``seed`` (a larger
    ``per_family`` extends the list: its first specs are the smaller corpus's)."""
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
    if spec.family == "attn_spike":
        from _attn_spike import AttentionSpike

        return AttentionSpike(spec.seed, "cpu", **spec.args)
    import _families

    args = dict(spec.args)
    if spec.family in ("teacher", "faulty_mlp"):
        args["steps"] = spec.steps
    return _families.build(spec.family, spec.seed, **args)


def run_spec(job: tuple[RunSpec, str]) -> dict[str, Any]:
    """Train one spec to its last step with no detector, under ``on_spike`` = ``stop`` for
    mode ``free`` and ``skip`` for mode ``skip``."""
    import torch

    from stability.trainer import train

    spec, mode = job
    torch.set_num_threads(1)
    start = time.perf_counter()
    config = {**spec.config, "on_spike": "stop" if mode == "free" else "skip"}
    try:
        result = train(_workload(spec), config, steps=spec.steps, detector=NullDetector(),
                       seed=spec.seed)
    except Exception as exc:  # one broken config must not sink the corpus
        return {"spec": asdict(spec), "mode": mode, "error": f"{type(exc).__name__}: {exc}"}
    return {"spec": asdict(spec), "mode": mode, "trace": result.trace,
            "eval": result.final_eval.get("eval_loss", math.nan),
            "seconds": time.perf_counter() - start}


def spec_key(spec: RunSpec, mode: str) -> str:
    text = json.dumps(asdict(spec), sort_keys=True) + f"v{CORPUS_VERSION}/{mode}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


TRAINING_SOURCES = ("guard.py", "gate.py", "optim.py", "clipping.py", "precision.py",
                    "init.py", "trainer.py", "config.py", "workloads/")
"""The parts of ``stability/`` that shape a recorded run's numbers (not its names)."""


def code_fingerprint() -> str:
    """What shapes a recorded run: torch, the training code of ``stability/`` and the
    families (no detector does: every run is recorded to its end)."""
    import torch

    digest = hashlib.sha256(torch.__version__.encode())
    package = ROOT / "stability"
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith(TRAINING_SOURCES):
            digest.update(rel.encode() + path.read_bytes())
    for name in ("_families.py", "_attn_spike.py"):
        digest.update((ROOT / "benchmarks" / name).read_bytes())
    return digest.hexdigest()[:12]


def load_runs(specs: Sequence[RunSpec], mode: str, *, refresh: bool, workers: int,
              any_cache: bool = False) -> list[dict[str, Any]]:
    """The recorded runs of ``specs`` in ``mode``: cached, else trained now and cached.

    ``any_cache``: use the newest cache even when the training code changed since (it says
    so); for iterating on detectors while others edit the training code."""
    path = cache_dir() / f"detection-{mode}-{code_fingerprint()}.pkl"
    if any_cache and not path.exists():
        older = sorted(cache_dir().glob(f"detection-{mode}-*.pkl"),
                       key=lambda p: p.stat().st_mtime)
        if older:
            print(f"corpus ({mode}): the training code changed; using the older cache "
                  f"{older[-1].name} as asked (--any-cache)")
            path = older[-1]
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
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(run_spec, [(s, mode) for s in todo], chunksize=2)
            for k, run in enumerate(results, 1):
                cached[spec_key(RunSpec(**run["spec"]), mode)] = run
                if k % 50 == 0 or k == len(todo):
                    print(f"  {k}/{len(todo)} runs, {time.perf_counter() - start:.0f} s",
                          flush=True)
                if k % 50 == 0:  # an interrupted corpus keeps what it trained
                    _save(cached, path)
        _save(cached, path)
        print(f"corpus ({mode}): {len(todo)} runs in {time.perf_counter() - start:.0f} s")
    else:
        print(f"corpus ({mode}): {len(specs)} runs from the cache {path.name}")
    return [cached[k] for k in keys]


def _save(cached: dict[str, dict[str, Any]], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(cached, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)


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
    smooth = rolling_median(loss, 9)
    best_before = np.minimum.accumulate(smooth)
    rose = smooth > 2.0 * best_before
    if not rose.any():
        return "healthy", None, None
    first_rise = int(np.argmax(rose))
    best = best_before[first_rise]
    end = float(np.median(loss[-20:]))
    return ("setback" if end > 2.0 * best else "recovered"), None, None


def rolling_median(x: np.ndarray, w: int) -> np.ndarray:
    pad = np.concatenate([np.full(w - 1, x[0]), x])
    windows = np.lib.stride_tricks.sliding_window_view(pad, w)
    return np.median(windows, axis=1)


def trained_below_start(loss: np.ndarray) -> bool:
    """The run ended finite and below where it started (median of its last 20 losses under
    its first): what *rescued* asks of a skip run that was never stopped."""
    tail = loss[-20:]
    return bool(np.isfinite(tail).all() and np.median(tail) < loss[0])


@dataclass
class Run:
    """A labelled run (its free trace) and the same config's skip run."""

    spec: RunSpec
    records: list[StepRecord]
    label: str
    nonfinite_step: int | None
    blowup_step: int | None
    skip_records: list[StepRecord]
    skip_loss: np.ndarray
    seconds: float = 0.0
    loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    eval_loss: float = math.nan
    skip_eval_loss: float = math.nan


def make_run(free: dict[str, Any], skip: dict[str, Any]) -> Run:
    loss = free["trace"]["loss"].to_numpy(np.float64)
    label, nonfinite, blowup = outcome_of(loss)
    return Run(RunSpec(**free["spec"]), records_from_trace(free["trace"]), label, nonfinite,
               blowup, records_from_trace(skip["trace"]),
               skip["trace"]["loss"].to_numpy(np.float64),
               seconds=free["seconds"] + skip["seconds"], loss=loss, eval_loss=free["eval"],
               skip_eval_loss=skip["eval"])
