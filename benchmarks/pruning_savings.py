"""What pruning saves, and what it costs: Optuna's pruners, explosion pruning, Ray Tune + ASHA.

    python benchmarks/pruning_savings.py                    # 3 workloads x 6 settings x 3 seeds
    python benchmarks/pruning_savings.py --quick            # 1 seed, 10 trials x 100 steps
    python benchmarks/pruning_savings.py --workloads deep_mlp --seeds 0 1 --out results.md
    python benchmarks/pruning_savings.py --settings d d+median d+p25 d+hyperband d+sh  # candidates

Every setting runs the same sweep: the search space of ``examples/<workload>.yaml`` at the
benchmark corpus's small sizes (``_common.SMALL``; ``transformer_lm`` post-LN), the same trial
budget, steps, evaluation cadence (``eval_loss`` every ``report_every`` steps, so every pruner
gets the same intermediate values) and seed (the spec's ``seed`` seeds both TPE and every
trial's training). Settings:

* ``a``  no pruning: ``pruner: none`` and ``stop_on_explosion: false``: every trial runs to
  its last step; a detector's verdict is recorded (with its onset), never acted on. That holds
  for a non-finite loss too: the loop can go on (on CPU the guard skips a non-finite update,
  so the weights stay as they were) and a plain Optuna objective without a NaN check does go
  on, so those steps are what no pruning costs. ``b``, ``c`` and ``e`` train the same way;
* ``b``  Optuna ``MedianPruner`` alone (explosion stopping off), ``n_warmup_steps`` 20;
* ``c``  Optuna ``HyperbandPruner`` alone (explosion stopping off), ``min_resource`` 20;
* ``d``  stabsweep's explosion pruning alone (``pruner: none``);
* ``d'`` explosion pruning + the recommended slow-trial pruner (``RECOMMENDED``); the
  other candidates (median, percentile 25 with 5 or 2 start-up trials, hyperband, successive
  halving) run with ``--settings d+median d+p25 d+p25s2 d+hyperband d+sh``;
* ``e``  Ray Tune + ``OptunaSearch`` (the spec's TPE sampler, same seed, the same
  define-by-run space through ``sweeps.spec.space.suggest``) + ``ASHAScheduler`` (``time_attr``
  step, grace 20 steps, ``max_t`` steps, reduction factor 4 (its default)), the trainable
  calling the same ``train()`` and reporting ``eval_loss`` at each evaluation; explosion
  verdicts are recorded, never acted on (as in ``a``);
  ``reuse_actors=True`` (Tune's default, False, adds ~1 s per trial; see
  ``orchestration_overhead.py``).

One Ray instance serves every sweep of the process (``orchestration_overhead.ray_init_kwargs``),
2 workers of 1 CPU, tracking off, storage in a temp folder. Per setting and seed: optimizer
steps, wall time (sweep call to return), exploding trials (a detector's verdict, whether or not
acted on), steps run after each explosion's onset (the diagnosis's onset step; for ``e`` the
verdict step, which is later, so ``e``'s figure is a lower bound), the best objective (a trial
that ran every step) and its trial number. And **regret** for the settings that prune
explosions: every trial stopped as exploded is rerun to its end, same params and seed, no
stopping (``sweeps.results.regret.explosion_regret``, on the same Ray workers); counted: those that
end stable, and those that would rank in the study's top 3.

Printed: per workload and setting, the mean and (min-max) over seeds; then ratios against
``a`` and the target checks (met / missed, with the numbers). ``--out`` writes the tables as
markdown, ``--json`` every raw figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from _common import ROOT, SMALL, median, table
from orchestration_overhead import ray_init_kwargs

WORKLOADS = ("rnn_adding", "deep_mlp", "transformer_lm")
WORKLOAD_ARGS = {**SMALL, "transformer_lm": {**SMALL["transformer_lm"], "norm": "post"}}
METRIC = "eval_loss"
GRACE = 20
"""steps before a slow-trial pruner may act (Median n_warmup_steps, Hyperband min_resource,
ASHA grace_period)."""
TOP_K = 3

# setting -> (pruner spec, stop_on_explosion); "e" is Ray Tune.
PRUNERS: dict[str, tuple[dict[str, Any], bool]] = {
    "a": ({"name": "none"}, False),
    "b": ({"name": "median", "n_warmup_steps": GRACE}, False),
    "c": ({"name": "hyperband", "min_resource": GRACE}, False),
    "d": ({"name": "none"}, True),
    "d+median": ({"name": "median", "n_warmup_steps": GRACE}, True),
    "d+p25": ({"name": "percentile", "percentile": 25.0, "n_warmup_steps": GRACE}, True),
    "d+p25s2": ({"name": "percentile", "percentile": 25.0, "n_warmup_steps": GRACE,
                 "n_startup_trials": 2}, True),
    "d+hyperband": ({"name": "hyperband", "min_resource": GRACE}, True),
    "d+sh": ({"name": "successive_halving", "min_resource": GRACE, "reduction_factor": 4},
             True),
}
RECOMMENDED = "d+p25"
"""The slow-trial pruner paired with explosion pruning in setting d' (see the README)."""
PRUNERS["d'"] = PRUNERS[RECOMMENDED]
LABELS = {
    "a": "(a) no pruning", "b": "(b) Optuna MedianPruner", "c": "(c) Optuna HyperbandPruner",
    "d": "(d) explosion pruning", "d'": "(d') explosion + percentile 25",
    "e": "(e) Ray Tune + OptunaSearch + ASHA",
    "d+median": "explosion + median", "d+p25": "explosion + percentile 25",
    "d+p25s2": "explosion + percentile 25, 2 startup",
    "d+hyperband": "explosion + hyperband", "d+sh": "explosion + successive halving",
}
SETTINGS = ("a", "b", "c", "d", "d'", "e")
CANDIDATES = ("d+median", "d+p25", "d+p25s2", "d+hyperband", "d+sh")
ALL_SETTINGS = (*SETTINGS, *CANDIDATES)
EXPLOSION_PRUNING = {"d", "d'", *CANDIDATES}


@dataclass
class Run:
    """One sweep: a workload, a setting, a seed."""

    workload: str
    setting: str
    seed: int
    steps: int = 0
    wall_s: float = 0.0
    trials: int = 0
    exploding: int = 0
    after_onset: list[int] = field(default_factory=list)
    best: float = math.nan
    best_trial: int | None = None
    top3: list[float] = field(default_factory=list)
    stopped_exploded: int = 0
    regret_stable: int | None = None
    regret_lost: int | None = None
    lost_trials: list[int] = field(default_factory=list)
    regret_s: float = 0.0


# ------------------------------------------------------------------ the sweeps
def spec_for(workload: str, setting: str, seed: int, trials: int, steps: int,
             report_every: int) -> Any:
    """The example's space at the small size, the benchmark's budget and the setting's pruner."""
    from sweeps.spec import parse_spec

    data = yaml.safe_load((ROOT / "examples" / f"{workload}.yaml").read_text())
    pruner, stop = PRUNERS[setting] if setting != "e" else ({"name": "none"}, False)
    safe = setting.replace("'", "p").replace("+", "-")
    data.update({
        "study": f"pruning-{workload}-{safe}-s{seed}",
        "workload": {"name": workload, "args": dict(WORKLOAD_ARGS[workload])},
        "steps": steps, "eval_every": report_every, "report_every": report_every,
        "n_trials": trials, "seed": seed, "pruner": dict(pruner), "stop_on_explosion": stop,
    })
    if pruner["name"] == "hyperband":
        data["pruner"]["max_resource"] = steps
    return parse_spec(data)


def run_stabsweep(spec: Any, tmp: Path) -> tuple[float, Any]:
    import optuna

    from sweeps.driver import RunOptions, run_sweep

    url = f"sqlite:///{tmp / 'stabsweep.db'}"
    options = RunOptions(workers=2, storage=url, tracking=False, cpus_per_trial=1.0,
                         workdir=tmp)
    start = time.perf_counter()
    run_sweep(spec, options)
    wall = time.perf_counter() - start
    return wall, optuna.load_study(study_name=spec.study, storage=url)


def measure_study(run: Run, study: Any, spec: Any) -> None:
    from optuna.trial import TrialState

    from sweeps.common import Outcome, keys

    finished = [t for t in study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    run.trials = len(finished)
    for t in finished:
        steps = int(t.user_attrs.get(keys.STEPS_RUN, 0) or 0)
        run.steps += steps
        verdict = t.user_attrs.get(keys.VERDICT)
        exploded = t.user_attrs.get(keys.OUTCOME) == Outcome.EXPLODED
        if verdict is None and not exploded:
            continue
        run.exploding += 1
        run.stopped_exploded += int(exploded and spec.stop_on_explosion)
        onset = t.user_attrs.get(keys.ONSET_STEP)
        if onset is None and isinstance(verdict, dict):
            onset = verdict.get("step")
        if onset is not None:
            # steps_run counts steps; onset is a 0-based step index: steps after it
            run.after_onset.append(max(0, steps - 1 - int(onset)))
    complete = [t for t in finished if t.state == TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value)]
    if complete:
        best = min(complete, key=lambda t: t.value)
        run.best, run.best_trial = float(best.value), best.number
        run.top3 = sorted(float(t.value) for t in complete)[:TOP_K]


def regret(run: Run, study: Any, spec: Any) -> None:
    from sweeps.results import explosion_regret

    start = time.perf_counter()
    report = explosion_regret(study, spec, top_k=TOP_K, map_tasks=ray_map)
    run.regret_s = time.perf_counter() - start
    run.regret_stable, run.regret_lost = report.n_stable, report.n_lost
    run.lost_trials = [r.number for r in report.reruns if r.top_k]


def ray_map(fn: Any, tasks: Sequence[Any]) -> list[Any]:
    """``fn`` over the reruns as Ray tasks of 1 CPU (2 at a time here), results in order."""
    import ray

    remote = ray.remote(num_cpus=1)(_one_thread)
    return ray.get([remote.remote(fn, task) for task in tasks])


def _one_thread(fn: Any, task: Any) -> Any:
    import torch

    torch.set_num_threads(1)  # as a sweep's 1-CPU worker ran the trial
    return fn(task)


def run_tune(run: Run, spec: Any, tmp: Path) -> None:
    """Setting e: Ray Tune + OptunaSearch + ASHA on the same space, sampler, seed and train()."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from sweeps.spec import make_sampler

    spec_data = spec.to_dict()

    search = OptunaSearch(space=DefineByRun(spec), metric=METRIC, mode="min",
                          sampler=make_sampler(spec))
    asha = ASHAScheduler(time_attr="step", metric=METRIC, mode="min", max_t=spec.steps,
                         grace_period=GRACE)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_tune_trainable, spec_data=spec_data),
                            {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=search,
                                    scheduler=asha, num_samples=spec.n_trials,
                                    max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp), verbose=0))
    start = time.perf_counter()
    results = tuner.fit()
    run.wall_s = time.perf_counter() - start
    full = []
    for number, result in enumerate(results):  # in trial creation order
        last = result.metrics or {}
        steps = int(last.get("step", 0) or 0)
        run.trials += 1
        run.steps += steps
        verdict_step = last.get("verdict_step", -1)
        if verdict_step is not None and verdict_step >= 0:
            run.exploding += 1
            run.after_onset.append(max(0, steps - 1 - int(verdict_step)))
        value = last.get(METRIC)
        if steps >= spec.steps and value is not None and math.isfinite(value):
            full.append((float(value), number))
    if results.errors:
        raise SystemExit(f"Ray Tune: {len(results.errors)} trials raised: {results.errors[0]}")
    if full:
        run.best, run.best_trial = min(full)
        run.top3 = sorted(v for v, _ in full)[:TOP_K]


class DefineByRun:
    """OptunaSearch's space: the same params, conditions and ranges as stabsweep's ask
    (``sweeps.spec.space.suggest``); a class, not a closure, so Tune can pickle its searcher."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def __call__(self, trial: Any) -> None:
        from sweeps.spec import suggest

        suggest(trial, self.spec)


def _tune_trainable(config: dict[str, Any], spec_data: dict[str, Any]) -> None:
    import torch
    from ray import tune

    from stability.detectors import VerdictRecorder, detector_for
    from stability.trainer import train
    from sweeps.spec import config_from_params, parse_spec

    torch.set_num_threads(1)
    spec = parse_spec(spec_data)
    stability_config, workload_args = config_from_params(config, spec)
    recorder = VerdictRecorder(detector_for(stability_config, spec.detector))

    def verdict_step() -> int:
        return -1 if recorder.verdict is None else int(recorder.verdict.step)

    def report(progress: Any) -> bool:
        if progress.evaluated_now and METRIC in progress.metrics:
            tune.report({METRIC: float(progress.metrics[METRIC]), "step": progress.step,
                         "verdict_step": verdict_step()})
        return False

    result = train(spec.workload.name, stability_config, steps=spec.steps,
                   eval_every=spec.eval_every, report_every=spec.report_every, report=report,
                   detector=recorder, seed=spec.seed, workload_args=workload_args)
    tune.report({METRIC: float(result.final_eval.get(METRIC, math.nan)),
                 "step": result.steps_run, "verdict_step": verdict_step()})


def one_run(workload: str, setting: str, seed: int, args: argparse.Namespace) -> Run:
    spec = spec_for(workload, setting, seed, args.trials, args.steps, args.report_every)
    run = Run(workload, setting, seed)
    with tempfile.TemporaryDirectory(prefix="pruning-bench-") as tmp:
        if setting == "e":
            run_tune(run, spec, Path(tmp))
        else:
            run.wall_s, study = run_stabsweep(spec, Path(tmp))
            measure_study(run, study, spec)
            if setting in EXPLOSION_PRUNING and not args.no_regret:
                regret(run, study, spec)
    return run


# ------------------------------------------------------------------ the report
def spread(values: Sequence[float], fmt: str = "{:.3g}") -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "-"
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return fmt.format(mean)
    return f"{fmt.format(mean)} ({fmt.format(min(vals))}-{fmt.format(max(vals))})"


def rows_for(workload: str, settings: Sequence[str], runs: list[Run]) -> list[list[str]]:
    rows = []
    for setting in settings:
        rs = [r for r in runs if r.workload == workload and r.setting == setting]
        if not rs:
            continue
        gaps = [g for r in rs for g in r.after_onset]
        regret_cell = "-"
        if any(r.regret_lost is not None for r in rs):
            regret_cell = (f"{sum(r.stopped_exploded for r in rs)} stopped / "
                           f"{sum(r.regret_stable or 0 for r in rs)} stable / "
                           f"{sum(r.regret_lost or 0 for r in rs)} top-3")
        rows.append([
            LABELS[setting], spread([r.steps for r in rs], "{:.0f}"),
            spread([r.wall_s for r in rs], "{:.1f}"),
            spread([r.exploding for r in rs], "{:.1f}"),
            f"{max(gaps)} / {median(gaps):.0f}" if gaps else "-",
            spread([r.best for r in rs], "{:.4f}"),
            "/".join("-" if r.best_trial is None else f"#{r.best_trial}" for r in rs),
            regret_cell,
        ])
    return rows


HEADERS = ["setting", "steps", "wall s", "exploding trials", "steps after onset max / median",
           "best eval_loss", "best trial (per seed)", "regret: stopped / stable / lost top-3"]


def mean(runs: list[Run], attr: str) -> float:
    vals = [getattr(r, attr) for r in runs]
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    return statistics.fmean(vals) if vals else math.nan


def targets(workload: str, runs: list[Run], report_every: int) -> list[tuple[str, bool, str]]:
    """(target, met, the numbers) for one workload."""
    by = {s: [r for r in runs if r.workload == workload and r.setting == s] for s in ALL_SETTINGS}
    out: list[tuple[str, bool, str]] = []
    a, d, dp = by["a"], by["d"], by["d'"]
    if a and d:
        ratio = mean(d, "steps") / mean(a, "steps")
        out.append(("(d) steps <= 0.6x (a)", ratio <= 0.6,
                    f"{mean(d, 'steps'):.0f} / {mean(a, 'steps'):.0f} = {ratio:.2f}x"))
        a_best = [r.best for r in a if not math.isnan(r.best)]
        ok = bool(a_best) and mean(d, "best") <= max(a_best)
        out.append(("(d) best inside (a)'s seed spread (or better)", ok,
                    f"(d) {mean(d, 'best'):.4f} vs (a) {min(a_best, default=math.nan):.4f}-"
                    f"{max(a_best, default=math.nan):.4f}"))
    for name, group in (("(d)", d), ("(d')", dp)):
        if group and all(r.regret_lost is not None for r in group):
            lost = sum(r.regret_lost or 0 for r in group)
            out.append((f"{name} 0 top-3 trials lost over all seeds", lost == 0,
                        f"{lost} lost of {sum(r.stopped_exploded for r in group)} stopped"))
    if dp:
        for other in ("b", "c", "e"):
            if not by[other]:
                continue
            o = by[other]
            o_best = [r.best for r in o if not math.isnan(r.best)]
            steps_ok = mean(dp, "steps") < mean(o, "steps")
            best_ok = bool(o_best) and mean(dp, "best") <= max(o_best)
            out.append((f"(d') fewer steps than ({other}) at an equal or better best",
                        steps_ok and best_ok,
                        f"steps {mean(dp, 'steps'):.0f} vs {mean(o, 'steps'):.0f}; best "
                        f"{mean(dp, 'best'):.4f} vs {mean(o, 'best'):.4f} "
                        f"(max {max(o_best, default=math.nan):.4f})"))
        if by["e"]:
            w, we = mean(dp, "wall_s"), mean(by["e"], "wall_s")
            out.append(("(d') less wall time than (e)", w < we, f"{w:.1f} s vs {we:.1f} s"))
    for name in ("d", "d'"):
        gaps = [g for r in by[name] for g in r.after_onset]
        if gaps:
            out.append((f"({name}) steps after onset <= one report interval ({report_every})",
                        max(gaps) <= report_every, f"max {max(gaps)}, median {median(gaps):.0f}"))
    return out


def ratios(workload: str, settings: Sequence[str], runs: list[Run]) -> list[list[str]]:
    a = [r for r in runs if r.workload == workload and r.setting == "a"]
    rows = []
    for s in settings:
        rs = [r for r in runs if r.workload == workload and r.setting == s]
        if not rs or not a:
            continue
        rows.append([LABELS[s], f"{mean(rs, 'steps') / mean(a, 'steps'):.2f}x",
                     f"{mean(rs, 'wall_s') / mean(a, 'wall_s'):.2f}x",
                     f"{mean(rs, 'best') - mean(a, 'best'):+.4f}"])
    return rows


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(args: argparse.Namespace, runs: list[Run], elapsed: float) -> str:
    """Print the tables and checks; return the same as markdown."""
    md = [f"Command: `python benchmarks/pruning_savings.py {' '.join(args.argv)}`".rstrip(),
          "", f"Machine: {machine()}; run time {elapsed / 60:.1f} min; {args.trials} trials x "
          f"{args.steps} steps, eval_loss every {args.report_every} steps, 2 workers, seeds "
          f"{', '.join(map(str, args.seeds))}. Cells: mean (min-max) over seeds.", ""]
    all_met: list[bool] = []
    for workload in args.workloads:
        rows = rows_for(workload, args.settings, runs)
        if not rows:
            continue
        print(f"\n== {workload} {WORKLOAD_ARGS[workload]}: mean (min-max) over seeds "
              f"{args.seeds} ==")
        print(table(HEADERS, rows))
        ratio_rows = ratios(workload, args.settings, runs)
        print()
        print(table(["setting", "steps / (a)", "wall / (a)", "best - (a) best"], ratio_rows))
        checks = targets(workload, runs, args.report_every)
        print()
        for name, met, numbers in checks:
            print(f"  {'met   ' if met else 'MISSED'}  {name}: {numbers}")
            all_met.append(met)
        md += [f"#### {workload} `{WORKLOAD_ARGS[workload]}`", "", markdown(HEADERS, rows), "",
               markdown(["setting", "steps / (a)", "wall / (a)", "best - (a) best"],
                        ratio_rows), "",
               markdown(["target", "", "numbers"],
                        [[n, "met" if m else "**missed**", x] for n, m, x in checks]), ""]
    print(f"\n{sum(all_met)} of {len(all_met)} target checks met; run time "
          f"{elapsed / 60:.1f} min")
    return "\n".join(md)


def machine() -> str:
    import torch

    return (f"{platform.machine()} {os.cpu_count()} CPUs, {platform.system()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}")


# ------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--settings", nargs="+", choices=ALL_SETTINGS, default=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=None, help="trials per sweep (24)")
    parser.add_argument("--steps", type=int, default=None, help="steps per trial (200)")
    parser.add_argument("--report-every", type=int, default=10,
                        help="evaluation and report cadence in steps (10)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: seed 0, 10 trials x 100 steps (unless given)")
    parser.add_argument("--no-regret", action="store_true", help="skip the regret reruns")
    parser.add_argument("--out", type=Path, help="write the tables as markdown here")
    parser.add_argument("--json", type=Path, help="write every run's raw figures here")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    args.argv = raw
    if args.quick:
        args.trials = args.trials or 10
        args.steps = args.steps or 100
        if "--seeds" not in raw:
            args.seeds = [0]
    args.trials = args.trials or 24
    args.steps = args.steps or 200
    if args.trials < 2 or args.steps < 2 * GRACE or args.report_every < 1:
        parser.error(f"need --trials >= 2, --steps >= {2 * GRACE}, --report-every >= 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="pruning-ray-"))
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no progress tables from Tune
    import warnings

    import optuna
    import ray
    import torch

    import stability.trainer  # noqa: F401  (imported before any clock starts)

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{machine()}; {len(args.workloads)} workloads x {len(args.settings)} settings x "
          f"{len(args.seeds)} seeds, {args.trials} trials x {args.steps} steps; load avg "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    start = time.perf_counter()
    ray.init(**ray_init_kwargs())
    runs: list[Run] = []
    try:
        for workload in args.workloads:
            for i, seed in enumerate(args.seeds):
                k = i % len(args.settings)  # rotate the order: load drifts hit all settings
                for setting in [*args.settings[k:], *args.settings[:k]]:
                    run = one_run(workload, setting, seed, args)
                    runs.append(run)
                    extra = ("" if run.regret_lost is None else
                             f"  regret {run.regret_stable} stable / {run.regret_lost} top-3 "
                             f"of {run.stopped_exploded} ({run.regret_s:.0f} s)")
                    print(f"  {workload:<14} {setting:<11} seed {seed}: {run.steps:6d} steps "
                          f"{run.wall_s:6.1f} s  exploding {run.exploding:2d}  best "
                          f"{run.best:.4f} (#{run.best_trial}){extra}", flush=True)
    finally:
        ray.shutdown()
    elapsed = time.perf_counter() - start
    text = report(args, runs, elapsed)
    if args.out:
        args.out.write_text(text + "\n")
        print(f"markdown: {args.out}")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in runs], indent=1))
        print(f"raw figures: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
