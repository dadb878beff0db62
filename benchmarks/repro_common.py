"""Shared by the repro_*.py scripts: run a grid spec once per seed as real stabsweep sweeps,
read every trial back from the study, and format tables.

Each seed is its own study (``<study>-s<seed>``; a sweep's trials all use the spec's seed) in
one SQLite file in a temporary folder, with tracking off, so nothing is written into the
repository. Ray is started once for all the sweeps of a script.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/<script>.py` from anywhere
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def run_seeds(spec_path: Path, seeds: Sequence[int], *, workers: int = 2,
              steps: int | None = None, quiet: bool = False) -> pd.DataFrame:
    """Run the spec's grid once per seed; one row per trial with ``seed``, the params
    (``params_*``), ``outcome``, ``exploded``, ``value`` and the final evaluation
    (``eval_*``: every metric the workload's evaluate returned) and ``overflow_count``."""
    import optuna
    import ray

    from sweeps.common import keys
    from sweeps.driver import RunOptions, run_sweep
    from sweeps.results import trials_frame
    from sweeps.spec import load_spec
    from sweeps.worker import init_ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(spec_path)
    if steps is not None:  # a quicker run than the spec's (for a smoke test)
        spec = dataclasses.replace(spec, steps=steps, eval_every=min(spec.eval_every or steps,
                                                                     steps))
    frames = []
    started = False
    old_cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="stabsweep-repro-") as tmp:
        os.chdir(ROOT)  # workers import benchmarks.* from here
        try:
            if not ray.is_initialized():
                init_ray(None, workers=workers, cpus_per_trial=1.0, gpus_per_trial=0.0)
                started = True
            storage = f"sqlite:///{tmp}/repro.db"
            for seed in seeds:
                t0 = time.perf_counter()
                study_name = f"{spec.study}-s{seed}"
                summary = run_sweep(spec, RunOptions(
                    workers=workers, storage=storage, study=study_name, tracking=False,
                    seed=seed, workdir=Path(tmp)))
                if not quiet:
                    print(f"  {study_name}: {summary.counts} in "
                          f"{time.perf_counter() - t0:.0f} s", flush=True)
                study = optuna.load_study(study_name=study_name, storage=storage)
                df = trials_frame(study)
                by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
                evals: list[dict[str, Any]] = []
                for number in df["number"]:
                    attrs = by_number[int(number)].user_attrs
                    final = attrs.get(keys.FINAL_EVAL) or {}
                    diag = attrs.get(keys.DIAGNOSIS) or {}
                    row = {f"eval_{k}": float(v) for k, v in final.items()
                           if isinstance(v, int | float)}
                    row["overflow_count"] = diag.get("overflow_count", 0) if isinstance(
                        diag, dict) else 0
                    evals.append(row)
                df = pd.concat([df.reset_index(drop=True), pd.DataFrame(evals)], axis=1)
                df["seed"] = seed
                frames.append(df)
        finally:
            os.chdir(old_cwd)
            if started:
                ray.shutdown()
    return pd.concat(frames, ignore_index=True)


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}g}"
    return str(value)


def mean_sd(values: Sequence[float], decimals: int = 3) -> str:
    vals = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{decimals}f}"
    return f"{statistics.mean(vals):.{decimals}f} ± {statistics.stdev(vals):.{decimals}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """The machine, its cores and its load now (the scripts' times depend on both)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    cpu = platform.processor() or platform.machine()
    return (f"{platform.system()} {cpu}, {os.cpu_count()} cores, load average {load:.1f} "
            f"at the end, Python {platform.python_version()}")


def write_block(name: str, text: str, figures: Sequence[Path] = ()) -> Path:
    """Print the README block of a finding and write it to benchmarks/results/<name>.md;
    say where it and its ``figures`` are."""
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
    print(f"wrote {', '.join(map(str, [*figures, path]))}")
    return path


def sweep_from_cli(spec_path: Path, doc: str | None) -> tuple[Any, float, argparse.Namespace]:
    """The scripts' shared command line (--seeds, --steps, --workers): run the spec's sweep
    once per seed and return (trials frame, wall seconds, the parsed arguments)."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="override the spec's steps")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    start = time.perf_counter()
    frame = run_seeds(spec_path, args.seeds, workers=args.workers, steps=args.steps)
    return frame, time.perf_counter() - start, args
