"""What running trials through stabsweep costs, against a plain loop and against Ray Tune.

    python benchmarks/orchestration_overhead.py                   # defaults: 10 trials x 600 steps
    python benchmarks/orchestration_overhead.py --trials 20 --steps 300 --rounds 3
    python benchmarks/orchestration_overhead.py --modes loop ss1 --profile

The same N trials (deep_mlp at the corpus's small size, Adam with norm clipping: a stable range,
so no trial stops early; every trial's steps are checked) run as

* ``loop``: a plain Python loop calling ``stability.trainer.train`` at 1 torch thread;
  ``loop2``: the same trials shared by two plain processes (no Ray), the scaling this
  machine allows at the moment, against which ``ss2`` is judged;
* ``ss1`` / ``ss2``: ``sweeps.driver.runner.run_sweep`` with 1 / 2 workers, tracking off, the
  embedded SQLite storage in a temp folder;
* ``tune1`` / ``tune2``: ``tune.Tuner`` + ``OptunaSearch`` with ``max_concurrent_trials`` 1 / 2,
  1 CPU per trial, ``reuse_actors`` left at its default (False), the trainable calling the same
  ``train()`` and reporting each evaluation with ``tune.report``; ``tune1r``: the same as
  ``tune1`` with ``reuse_actors=True``.

Identical work: the N param sets (lr, clip threshold, warm-up) are drawn once from a fixed seed
and fed to every mode: the loops iterate over them, stabsweep gets them enqueued in its study
before the sweep starts (``Study.enqueue_trial``; TPE still runs its ``ask`` as usual), Tune
gets them as ``points_to_evaluate`` (which OptunaSearch enqueues the same way). Ray is started
with the settings stabsweep uses (no dashboard, no log streaming) in every Ray mode, so the
comparison isolates the orchestration layer; Tune's other settings are its defaults
(``verbose=0`` aside, and its results folder in a temp dir). Every process runs with
``OMP_NUM_THREADS=1``, as Ray gives its 1-CPU workers.

Each mode runs in a fresh subprocess (clean imports and Ray state; torch and ``stability`` are
imported before the clock starts, as in a user's script), and the modes run interleaved:
``--rounds`` rounds, each in a rotated order. Per mode and round the driver records
``startup`` (call -> first trial dispatched: Ray start, actor start, study creation),
``trial phase`` (first dispatch -> last result received) and ``teardown`` (-> the call returned
and Ray is shut down). Figures are medians over rounds; ratios are paired within a round.

Two per-trial overheads: ``vs loop = (trial phase - loop's time / concurrency) / N`` compares
two runs, so a shared machine's load shifts move it by hundreds of ms; ``outside train() =
(trial phase - sum of the mode's own train() times / concurrency) / N`` is measured within one
run (the gaps in which no worker trains), and is the figure to trust on a busy machine. For
stabsweep the driver's time per step of a trial (ask, tell, Ray round trip) is also printed;
``--profile`` adds a cProfile of the driver in an extra run.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from _common import ROOT, SMALL, median, table

MODES = ("loop", "loop2", "ss1", "ss2", "tune1", "tune1r", "tune2")
CONCURRENCY = {"loop": 1, "loop2": 2, "ss1": 1, "ss2": 2, "tune1": 1, "tune1r": 1, "tune2": 2}
WORKLOAD = "deep_mlp"
FIXED = {"precision": "fp32", "optimizer": "adam", "clip_method": "norm"}
SPACE = {"lr": (3e-4, 3e-3), "clip_threshold": (0.5, 5.0), "warmup_steps": (0, 20, 10)}
METRIC = "eval_loss"
STUDY = "orchestration-overhead"
TARGET_SS1, TARGET_SS2 = 1.05, 1.8


def param_sets(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """N fixed points of SPACE (log-uniform lr and clip threshold, warm-up on its grid)."""
    rng = random.Random(seed)
    lo, hi, step = SPACE["warmup_steps"]
    out = []
    for _ in range(n):
        point: dict[str, Any] = {}
        for name in ("lr", "clip_threshold"):
            low, high = SPACE[name]
            point[name] = low * (high / low) ** rng.random()
        point["warmup_steps"] = rng.randrange(lo, hi + 1, step)
        out.append(point)
    return out


def spec_dict(n: int, steps: int) -> dict[str, Any]:
    lo, hi, step = SPACE["warmup_steps"]
    return {
        "study": STUDY, "workload": {"name": WORKLOAD, "args": dict(SMALL[WORKLOAD])},
        "steps": steps, "eval_every": steps // 2, "report_every": 10,
        "objective": {"metric": METRIC, "direction": "minimize"}, "n_trials": n, "seed": 0,
        "sampler": {"name": "tpe"}, "pruner": {"name": "none"}, "fixed": dict(FIXED),
        "space": {
            "lr": {"type": "float", "low": SPACE["lr"][0], "high": SPACE["lr"][1], "log": True},
            "clip_threshold": {"type": "float", "low": SPACE["clip_threshold"][0],
                               "high": SPACE["clip_threshold"][1], "log": True},
            "warmup_steps": {"type": "int", "low": lo, "high": hi, "step": step},
        },
    }


def ray_init_kwargs() -> dict[str, Any]:
    """What sweeps.worker.pool.init_ray passes, so every Ray mode starts the same cluster."""
    import logging

    env = {"PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), *sys.path] if p)}
    return {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
            "runtime_env": {"env_vars": env}}


# ------------------------------------------------------------------ the modes (in a child)
def train_one(params: dict[str, Any], steps: int, on_eval: Any = None) -> tuple[int, float]:
    """One trial as a stabsweep worker runs it; returns (steps run, final eval_loss)."""
    from stability.config import StabilityConfig
    from stability.detectors import default_detector
    from stability.trainer import train

    def report(progress: Any) -> bool:
        if on_eval is not None and progress.evaluated_now and METRIC in progress.metrics:
            on_eval(progress.step, float(progress.metrics[METRIC]))
        return False

    result = train(WORKLOAD, StabilityConfig(**FIXED, **params), steps=steps,
                   eval_every=steps // 2, report_every=10, report=report,
                   detector=default_detector(), seed=0, workload_args=dict(SMALL[WORKLOAD]),
                   threads=1)
    return result.steps_run, result.final_eval[METRIC]


def run_loop(points: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    walls, steps_run = [], []
    for point in points:
        start = time.perf_counter()
        done, _ = train_one(point, steps)
        walls.append(time.perf_counter() - start)
        steps_run.append(done)
    end = time.perf_counter() - t0
    return {"startup": 0.0, "phase": end, "teardown": 0.0, "total": end, "train_s": walls,
            "params": points,
            "steps_run": steps_run}


class DriverTimers:
    """Wall time the stabsweep driver spends per step of a trial, patched onto its methods
    (in the benchmark's own child process; a few clock reads per call)."""

    METHODS = ("_dispatch", "_prepare", "_collect", "_receive", "_tell", "_finished_count")
    """Span names; ``_prepare``/``_receive`` (the proposed pipelining) stay empty."""
    TARGETS: ClassVar[dict[str, tuple[str, str]]] = {
        "_dispatch": ("Dispatcher", "dispatch"), "_collect": ("Dispatcher", "collect"),
        "_tell": ("module", "tell_outcome"), "_finished_count": ("module", "finished_count")}
    """span -> what is wrapped: a Dispatcher method, or a function sweeps.driver.dispatch calls."""

    def __init__(self) -> None:
        self.spans: dict[str, list[float]] = {name: [] for name in self.METHODS}
        self.collect_start: dict[int, float] = {}

    def install(self) -> None:
        from sweeps.driver import dispatch

        for name, (where, attr) in self.TARGETS.items():
            owner: Any = dispatch.Dispatcher if where == "Dispatcher" else dispatch
            setattr(owner, attr, self._wrap(name, getattr(owner, attr)))

    def _wrap(self, name: str, original: Any) -> Any:
        def timed(*args: Any) -> Any:
            start = time.perf_counter()
            if name == "_collect" and args[1] in args[0].running:
                self.collect_start.setdefault(args[0].running[args[1]].trial.number, start)
            try:
                return original(*args)
            finally:
                self.spans[name].append(time.perf_counter() - start)

        return timed


def _pool_init() -> None:
    import torch

    import stability.trainer  # noqa: F401  (as the loop's process has it)

    torch.set_num_threads(1)


def _pool_trial(point: dict[str, Any], steps: int) -> tuple[float, float, int]:
    start = time.time()
    done, _ = train_one(point, steps)
    return start, time.time(), done


def run_loop2(points: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Two plain processes sharing the trials: what 2 workers can gain on this machine now."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.time()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_pool_init) as pool:
        spans = list(pool.map(_pool_trial, points, [steps] * len(points)))
    t_end = time.time()
    out = _phases(t0, min(s for s, _, _ in spans), max(e for _, e, _ in spans), t_end)
    out.update(train_s=[e - s for s, e, _ in spans], steps_run=[d for _, _, d in spans],
               params=points)
    return out


def run_stabsweep(points: list[dict[str, Any]], steps: int, workers: int,
                  profile: bool) -> dict[str, Any]:
    import optuna

    from sweeps.driver import RunOptions, TrialDispatched, TrialEnded, run_sweep
    from sweeps.spec import parse_spec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = parse_spec(spec_dict(len(points), steps))
    timers = DriverTimers()
    timers.install()
    with tempfile.TemporaryDirectory(prefix="stabsweep-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'stabsweep.db'}"
        storage = optuna.storages.RDBStorage(url)
        study = optuna.create_study(study_name=STUDY, storage=storage)
        for point in points:
            study.enqueue_trial(point)
        storage.engine.dispose()
        del study, storage
        marks: dict[str, list[float]] = {"dispatch": [], "trial": []}
        dispatched: dict[int, float] = {}
        params: list[dict[str, Any]] = []
        walls: dict[int, float] = {}
        steps_run = []

        def on_event(event: Any) -> None:
            if isinstance(event, TrialDispatched):  # emitted once the task is submitted
                marks["dispatch"].append(time.perf_counter())
                dispatched[event.trial] = time.perf_counter()
                params.append(dict(event.params))
            if isinstance(event, TrialEnded):
                marks["trial"].append(time.perf_counter())
                walls[event.trial] = float(event.wall_time_s)
                steps_run.append(int(event.steps_run))

        options = RunOptions(workers=workers, storage=url, tracking=False, cpus_per_trial=1.0,
                             workdir=Path(tmp))
        profiler = cProfile.Profile() if profile else None
        t0 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        summary = run_sweep(spec, options, on_event=on_event)
        if profiler is not None:
            profiler.disable()
        t_end = time.perf_counter()
    out = _phases(t0, marks["dispatch"][0], marks["trial"][-1], t_end)
    # submit -> result ready, less the time run_trial itself measured: Ray's round trip
    transport = [timers.collect_start[k] - dispatched[k] - walls[k] for k in walls]
    spans = timers.spans
    if spans["_receive"]:  # pipelined driver: ask (_prepare) apart from submit (_dispatch)
        ray_get = spans["_receive"]
    else:
        ray_get = [c - t for c, t in zip(spans["_collect"], spans["_tell"], strict=True)]
    out.update(train_s=list(walls.values()), steps_run=steps_run, counts=summary.counts,
               params=params,
               driver={"dispatch": spans["_dispatch"], "ask ahead": spans["_prepare"],
                       "ray.get": ray_get, "tell": spans["_tell"],
                       "finished_count": spans["_finished_count"], "transport": transport})
    if profiler is not None:
        out["profile"] = _profile_text(profiler)
    return out


def run_tune(points: list[dict[str, Any]], steps: int, concurrency: int,
             reuse_actors: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    import optuna
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    marks: dict[str, list[float]] = {"start": [], "complete": []}

    class Marks(tune.Callback):
        def on_trial_start(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            marks["start"].append(time.perf_counter())

        def on_trial_complete(self, iteration: int, trials: Any, trial: Any,
                              **info: Any) -> None:
            marks["complete"].append(time.perf_counter())

    def trainable(config: dict[str, Any]) -> None:
        start = time.perf_counter()
        done, value = train_one(config, steps, on_eval=lambda step, v: tune.report(
            {METRIC: v, "step": step}))
        tune.report({METRIC: value, "step": done, "steps_run": done,
                     "train_s": time.perf_counter() - start})

    lo, hi, step = SPACE["warmup_steps"]
    space = {
        "lr": optuna.distributions.FloatDistribution(*SPACE["lr"], log=True),
        "clip_threshold": optuna.distributions.FloatDistribution(*SPACE["clip_threshold"],
                                                                 log=True),
        "warmup_steps": optuna.distributions.IntDistribution(lo, hi, step=step),
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        ray.init(**ray_init_kwargs())
        try:
            search = OptunaSearch(space=space, metric=METRIC, mode="min",
                                  points_to_evaluate=[dict(p) for p in points], seed=0)
            tuner = tune.Tuner(
                tune.with_resources(trainable, {"cpu": 1}),
                tune_config=tune.TuneConfig(search_alg=search, num_samples=len(points),
                                            max_concurrent_trials=concurrency,
                                            reuse_actors=reuse_actors),
                run_config=tune.RunConfig(storage_path=tmp, verbose=0, callbacks=[Marks()]))
            results = tuner.fit()
        finally:
            ray.shutdown()
        t_end = time.perf_counter()
    frame = results.get_dataframe()
    out = _phases(t0, marks["start"][0], marks["complete"][-1], t_end)
    out.update(train_s=[float(v) for v in frame["train_s"]],
               steps_run=[int(v) for v in frame["steps_run"]],
               counts={"errors": len(results.errors)},
               params=[{name: row[f"config/{name}"] for name in SPACE}
                       for row in frame.to_dict("records")])
    return out


def _phases(t0: float, first: float, last: float, t_end: float) -> dict[str, Any]:
    return {"startup": first - t0, "phase": last - first, "teardown": t_end - last,
            "total": t_end - t0}


def _profile_text(profiler: cProfile.Profile, lines: int = 25) -> str:
    """The driver's heaviest calls, then the sweep's own functions (per-trial costs)."""
    buf = io.StringIO()
    stats = pstats.Stats(profiler, stream=buf).sort_stats("cumulative")
    stats.print_stats(lines)
    stats.print_stats(r"sweeps[/\\](runner|dispatch|tell|space|storage|workers)\.py")
    stats.print_callees(r"(tell|dispatch)\.py:\d+\((tell_outcome|dispatch)\)")
    return buf.getvalue()


def child(mode: str, trials: int, steps: int, profile: bool, out: Path) -> None:
    import torch

    import stability.trainer  # noqa: F401  (a user's script has it imported)

    torch.set_num_threads(1)
    points = param_sets(trials)
    if mode == "loop":
        result = run_loop(points, steps)
    elif mode == "loop2":
        result = run_loop2(points, steps)
    elif mode.startswith("ss"):
        result = run_stabsweep(points, steps, CONCURRENCY[mode], profile)
    else:
        result = run_tune(points, steps, CONCURRENCY[mode], reuse_actors=mode.endswith("r"))
    out.write_text(json.dumps(result))


# ------------------------------------------------------------------ the parent
def run_child(mode: str, args: argparse.Namespace, timeout: float,
              profile: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="orch-bench-", ignore_cleanup_errors=True) as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode,
               "--trials", str(args.trials), "--steps", str(args.steps), "--out", str(out)]
        if profile:
            cmd.append("--profile")
        # OMP_NUM_THREADS: what Ray gives its 1-CPU workers, so the loops get it too.
        # RAY_TMPDIR: Ray's session folders (logs, sockets) go with this temp dir.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_TMPDIR": tmp}
        load = os.getloadavg()[0]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True, env=env)
        try:
            log, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the child's session (Ray's daemons may outlive it)
            proc.communicate()
            raise SystemExit(
                f"mode {mode} ran past {timeout:.0f} s; lower --trials/--steps") from None
        if proc.returncode != 0 or not out.exists():
            raise SystemExit(f"mode {mode} failed (exit {proc.returncode}):\n{log[-4000:]}")
        result: dict[str, Any] = json.loads(out.read_text())
    result["load"] = load
    if _point_set(result["params"]) != _point_set(param_sets(args.trials)):
        raise SystemExit(f"mode {mode} ran other params than the loop: {result['params']}")
    bad = [s for s in result["steps_run"] if s != args.steps]
    if len(result["steps_run"]) != args.trials or bad:
        raise SystemExit(f"mode {mode}: {len(result['steps_run'])} trials ran, steps "
                         f"{result['steps_run']}: not the same work as the loop")
    return result


def _point_set(points: list[dict[str, Any]]) -> list[tuple[float, ...]]:
    return sorted(tuple(round(float(p[name]), 9) for name in SPACE) for p in points)


def report(args: argparse.Namespace, rounds: list[dict[str, dict[str, Any]]]) -> None:
    n = args.trials
    modes = [m for m in MODES if m in args.modes]

    def med(mode: str, key: str) -> float:
        return median([r[mode][key] for r in rounds])

    def overhead(r: dict[str, dict[str, Any]], mode: str) -> float:
        return (r[mode]["phase"] - r["loop"]["phase"] / CONCURRENCY[mode]) / n

    def gaps(r: dict[str, dict[str, Any]], mode: str) -> float:
        """Trial phase not spent inside train() (with perfect packing onto the slots)."""
        return (r[mode]["phase"] - sum(r[mode]["train_s"]) / CONCURRENCY[mode]) / n

    rows = []
    for mode in modes:
        in_trial = median([median(r[mode]["train_s"]) for r in rounds])
        first = median([r[mode]["train_s"][0] for r in rounds])
        row = [mode, CONCURRENCY[mode], f"{med(mode, 'total'):.2f}", f"{med(mode, 'startup'):.2f}",
               f"{med(mode, 'phase'):.2f}", f"{med(mode, 'teardown'):.2f}",
               f"{n / med(mode, 'phase'):.3f}", f"{n / med(mode, 'total'):.3f}",
               f"{in_trial:.2f}", f"{first:.2f}"]
        row.append(f"{1000 * median([overhead(r, mode) for r in rounds]):.0f}"
                   if "loop" in modes and mode != "loop" else "-")
        row.append(f"{1000 * median([gaps(r, mode) for r in rounds]):.0f}")
        row.append(f"{median([r[mode]['load'] for r in rounds]):.1f}")
        rows.append(row)
    print(table(["mode", "conc", "total s", "startup s", "trial phase s", "teardown s",
                 "trials/s (phase)", "trials/s (total)", "train() s (median trial)",
                 "first trial s", "overhead ms/trial", "outside train() ms/trial", "load avg"],
                rows))

    def paired(a: str, b: str, key: str, invert: bool = False) -> float:
        values = [(r[b][key] / r[a][key]) if invert else (r[a][key] / r[b][key])
                  for r in rounds]
        return median(values)

    print()
    if {"loop", "ss1"} <= set(modes):
        phase, total = paired("ss1", "loop", "phase"), paired("ss1", "loop", "total")
        print(f"ss1 / loop time, trial phase: {phase:.3f}x  "
              f"({'meets' if phase <= TARGET_SS1 else 'MISSES'} target <= {TARGET_SS1}x)")
        print(f"ss1 / loop time, total incl. Ray start: {total:.3f}x")
        own = median([r["ss1"]["phase"] / sum(r["ss1"]["train_s"]) for r in rounds])
        print(f"ss1 trial phase / ss1's own time in run_trial: {own:.3f}x (the same ratio, "
              "immune to load shifts between the two runs)")
    if {"ss1", "ss2"} <= set(modes):
        phase = paired("ss1", "ss2", "phase")
        total = paired("ss1", "ss2", "total")
        print(f"ss2 / ss1 throughput, trial phase: {phase:.2f}x  "
              f"({'meets' if phase >= TARGET_SS2 else 'MISSES'} target >= {TARGET_SS2}x)")
        print(f"ss2 / ss1 throughput, total incl. Ray start: {total:.2f}x")
        slow = median([median(r["ss2"]["train_s"]) / median(r["ss1"]["train_s"]) for r in rounds])
        print(f"  a trial's run_trial time, ss2 / ss1: {slow:.2f}x (> 1: the two workers and "
              "the machine's other load share the 2 cores)")
        if {"loop", "loop2"} <= set(modes):
            ceiling = paired("loop", "loop2", "phase")
            print(f"  two plain processes, loop2 / loop throughput: {ceiling:.2f}x (this "
                  f"machine's ceiling now); ss2 reaches {phase / ceiling:.0%} of it")
    for ours, theirs in (("ss1", "tune1"), ("ss1", "tune1r"), ("ss2", "tune2")):
        if {ours, theirs} <= set(modes):
            figures = []
            if "loop" in modes:
                figures.append(("vs loop", median([overhead(r, ours) for r in rounds]),
                                median([overhead(r, theirs) for r in rounds])))
            figures.append(("outside train()", median([gaps(r, ours) for r in rounds]),
                            median([gaps(r, theirs) for r in rounds])))
            text = "; ".join(f"{what} {1000 * a:.0f} vs {1000 * b:.0f} ms "
                             f"({'below' if a < b else 'NOT below'})" for what, a, b in figures)
            print(f"per-trial overhead {ours} vs {theirs}: {text}")
    ss_modes = [m for m in modes if m.startswith("ss")]
    if ss_modes:
        print("\nstabsweep driver: ms per trial spent in each step (its total / N, median over "
              "rounds);\ntransport = submit -> result ready, less run_trial's own clock: "
              "Ray's round trip, plus a worker's first `stability` imports (run_trial starts "
              "its clock after them)")
        parts = list(rounds[0][ss_modes[0]]["driver"])
        rows = [[mode, *(f"{1000 * median([sum(r[mode]['driver'][p]) / n for r in rounds]):.1f}"
                         for p in parts)] for mode in ss_modes]
        print(table(["mode", *parts], rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="trials per mode (N)")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per trial")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds over the modes (medians over rounds)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                        help="which modes (loop is the reference for the overheads)")
    parser.add_argument("--profile", action="store_true",
                        help="then cProfile the stabsweep driver in an extra ss1 run")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mode run")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("trials", "steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1; got {getattr(args, name)}.")
    if args.steps < 20:
        parser.error(f"--steps must be >= 20 (two evaluations, reports every 10); "
                     f"got {args.steps}.")
    if args.child:
        child(args.child, args.trials, args.steps, args.profile, Path(args.out))
        return 0
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {WORKLOAD} {SMALL[WORKLOAD]}, "
          f"{args.trials} trials x {args.steps} steps, {args.rounds} rounds of "
          f"{', '.join(args.modes)} (rotated order), medians; load avg at start "
          f"{os.getloadavg()[0]:.1f}")
    rounds: list[dict[str, dict[str, Any]]] = []
    modes = [m for m in MODES if m in args.modes]
    for i in range(args.rounds):
        order = modes[i % len(modes):] + modes[:i % len(modes)]
        results = {}
        for mode in order:
            results[mode] = run_child(mode, args, args.timeout)
            print(f"  round {i + 1}: {mode:<7} total {results[mode]['total']:6.2f} s  "
                  f"phase {results[mode]['phase']:6.2f} s  load {results[mode]['load']:.1f}",
                  flush=True)
        rounds.append(results)
    print()
    report(args, rounds)
    if args.profile:
        extra = run_child("ss1", args, args.timeout, profile=True)
        print(f"\n== cProfile of the stabsweep driver (ss1, an extra run, not in the figures "
              f"above) ==\n{extra['profile']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
