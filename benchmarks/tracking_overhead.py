"""What MLflow tracking costs a trial, measured in one run (SQLite store, as the embedded default).

    .venv/bin/python benchmarks/tracking_overhead.py [--repeats 5] [--steps 300] [--quick]

Prints, side by side:

1. the SQLite store's write rate (one process, ``log_batch`` of 1,000 values) and the values per
   second each built-in workload would send at each per-layer cadence: the measurement behind
   the automatic per-layer cadence ``max(25, layers)``;
2. one trial with tracking on vs off: same workload, config, seed and steps; on = the driver's
   ``create_trial_run`` excluded (shown apart), the worker's whole path included (start,
   ``on_sync`` every step, ``finish``: tags, eval metrics, trace.parquet and diagnosis written
   into the spool, run status). The host's uploader process sends it meanwhile; the next run
   starts once it landed, so no run pays for another's upload. Runs are interleaved (off, on,
   off, on, ...); medians and the spread (min-max) are reported, with the breakdown: training
   loop, time in ``on_sync``, ``finish``, and the time until the trial had landed;
3. the time until a 20-layer x 2,000-step trace has landed in the store, every value at full
   resolution: the batched TrialTracker vs the naive one ``client.log_metric`` call per value
   (run on the first steps only and extrapolated, as it is much slower).

Torch runs on one thread (as a sweep worker does). Wall times depend on the machine's load;
CPU times (this process, every thread: training and the tracker's writer) much less so.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stability.records import StepRecord
from stability.trainer import train
from sweeps.common import Outcome
from sweeps.tracking import StudyTracker, TrialTracker, auto_layer_every
from sweeps.worker import TrialOutcome

CONFIG = {"lr": 3e-4, "init": "kaiming_normal"}
WORKLOADS = {
    "deep_mlp": {},
    "deep_mlp (quick.yaml)": {"depth": 12, "width": 32, "batch_size": 64},
    "rnn_adding": {},
    "transformer_lm": {},
    "cnn_digits": {},
}
CADENCES = (1, 5, 10, 25, 50)


def store_rate(uri: str, experiment_id: str, n: int = 20_000) -> float:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(uri)
    run_id = client.create_run(experiment_id, run_name="rate").info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(f"k{i % 20}", float(i), now, i // 20) for i in range(n)]
    start = time.perf_counter()
    for i in range(0, n, 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    return n / (time.perf_counter() - start)


def workload_rates(steps: int) -> list[tuple[str, float, int]]:
    rows = []
    for label, args in WORKLOADS.items():
        name = label.split(" ")[0]
        try:
            result = train(name, CONFIG, steps=steps, threads=1, workload_args=args)
        except Exception as exc:  # a workload that cannot run here is reported, not fatal
            print(f"  {label}: skipped ({type(exc).__name__}: {exc})")
            continue
        layers = sum(1 for c in result.trace.columns if str(c).startswith("grad_norm/"))
        rows.append((label, result.steps_run / result.wall_time_s, layers))
    return rows


def one_trial(study: StudyTracker, number: int, workload: str, steps: int, tracked: bool,
              plots: str = "") -> dict[str, float]:
    """Wall and CPU seconds (this process, all threads) of the whole trial, its training
    loop and its finish; for a tracked one also the driver's run creation, the time in
    on_sync, and when it had landed in the store."""
    tracker = None
    create = 0.0
    if tracked:
        start = time.perf_counter()
        run_id = study.create_trial_run(number, CONFIG)  # driver side: not counted
        create = time.perf_counter() - start
        settings = study.settings_for(run_id)
        settings.plots = plots or settings.plots
        task = type("Task", (), {"tracking": settings, "config": CONFIG,
                                 "trial_number": number, "study_name": "bench"})()
    wall, cpu = time.perf_counter(), time.process_time()
    if tracked:
        tracker = TrialTracker.start(task)
    loop_wall, loop_cpu = time.perf_counter(), time.process_time()
    result = train(workload, CONFIG, steps=steps, eval_every=max(1, steps // 3), threads=1,
                   seed=0, on_sync=tracker.on_sync if tracker else None)
    fin_wall, fin_cpu = time.perf_counter(), time.process_time()
    if tracker is not None:
        outcome = TrialOutcome(number, Outcome.COMPLETE, 0.0, "ok", steps_run=result.steps_run)
        tracker.finish(result, outcome)
    end_wall, end_cpu = time.perf_counter(), time.process_time()
    landed = 0.0
    if tracker is not None:
        tracker.wait_landed(timeout=300)  # not counted: the uploader's work, off this trial
        landed = time.perf_counter() - end_wall
    return {"wall": end_wall - wall, "cpu": end_cpu - cpu, "loop_wall": fin_wall - loop_wall,
            "loop_cpu": fin_cpu - loop_cpu, "finish_wall": end_wall - fin_wall,
            "on_sync": tracker.stats.write_s if tracker else 0.0, "create": create,
            "landed": landed}


def compare(study: StudyTracker, workload: str, steps: int, repeats: int, plots: bool
            ) -> None:
    one_trial(study, 0, workload, 20, tracked=True)  # warm-up: imports, matplotlib, caches
    one_trial(study, 0, workload, 20, tracked=False)
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": [], "plots": []}
    for i in range(repeats):
        runs["off"].append(one_trial(study, 0, workload, steps, tracked=False))
        runs["on"].append(one_trial(study, 1 + i, workload, steps, tracked=True))
        if plots:
            runs["plots"].append(one_trial(study, 100 + i, workload, steps, tracked=True,
                                           plots="all"))
    med = {mode: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
           for mode, rows in runs.items() if rows}
    off, on = med["off"], med["on"]
    ratios = sorted(b["wall"] / a["wall"] for a, b in zip(runs["off"], runs["on"]))
    print(f"   {workload}, {steps} steps ({1000 * off['loop_wall'] / steps:.1f} ms/step "
          "untracked)")
    print(f"   {'':<42}{'off':>8}{'on':>8}{'ratio':>8}")
    for label, key in (("whole trial, wall (s)", "wall"), ("whole trial, CPU (s)", "cpu"),
                       ("training loop, wall (s)", "loop_wall"),
                       ("training loop, CPU (s)", "loop_cpu")):
        print(f"   {label:<42}{off[key]:>8.3f}{on[key]:>8.3f}{on[key] / off[key]:>7.3f}x")
    print(f"   per-pair wall ratio on/off: median {statistics.median(ratios):.3f}x, spread "
          f"{ratios[0]:.3f}x-{ratios[-1]:.3f}x over {len(ratios)} pairs")
    print("   breakdown of a tracked trial (median):")
    print(f"     {'in on_sync (encode + append to the spool), s':<48}{on['on_sync']:>8.3f}"
          f"  ({1e6 * on['on_sync'] / steps:.0f} us/step)")
    print(f"     {'finish (artifacts + ops into the spool), s':<48}{on['finish_wall']:>8.3f}")
    print(f"     {'driver: create_trial_run (not in the trial), s':<48}{on['create']:>8.3f}")
    print(f"     {'uploader: landed after the trial ended, s':<48}{on['landed']:>8.3f}")
    if "plots" in med:
        both = med["plots"]
        print(f"   {'whole trial with plots=all, wall (s)':<42}{off['wall']:>8.3f}"
              f"{both['wall']:>8.3f}{both['wall'] / off['wall']:>7.3f}x   (the uploader "
              f"draws the PNGs: landed {both['landed']:.2f} s after)")


def synthetic(steps: int, layers: int) -> list[StepRecord]:
    rng = np.random.default_rng(0)
    names = tuple(f"layers.{i}" for i in range(layers))
    norms = np.exp(rng.normal(0, 0.3, (steps, layers)))
    return [StepRecord(step=s, loss=1.0 / (1 + s), global_norm=float(math.sqrt(
        (norms[s] ** 2).sum())), layer_norms=norms[s], layer_names=names, lr=1e-3)
        for s in range(steps)]


def landed_batched(study: StudyTracker, records: list[StepRecord], layer_every: int | None
                   ) -> tuple[float, int]:
    number = 10_000 + (layer_every or 0)
    run_id = study.create_trial_run(number, {})
    settings = study.settings.for_run(run_id)
    settings.layer_every = layer_every
    tracker = TrialTracker(settings, trial_number=number)
    start = time.perf_counter()
    for record in records:
        tracker.on_sync([record])
    tracker.flush(timeout=600)  # the run stays RUNNING; only the landing time matters here
    return time.perf_counter() - start, tracker.stats.points


def landed_naive(study: StudyTracker, records: list[StepRecord]) -> tuple[float, int]:
    from mlflow import MlflowClient

    client = MlflowClient(study.sink.uri)
    run_id = study.create_trial_run(20_000, {})
    start = time.perf_counter()
    n = 0
    for record in records:
        client.log_metric(run_id, "loss", record.loss, step=record.step)
        client.log_metric(run_id, "grad_norm/global", record.global_norm, step=record.step)
        for name, value in zip(record.layer_names, record.layer_norms.tolist()):
            client.log_metric(run_id, f"grad_norm/{name}", value, step=record.step)
        n += 2 + len(record.layer_names)
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--naive-steps", type=int, default=100,
                        help="steps of the 2,000-step trace the naive logger sends")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.naive_steps = 2, 30
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ.setdefault("STABSWEEP_UPLOADER_IDLE_S", "20")
        uri = f"sqlite:///{tmp}/mlflow.db"
        study = StudyTracker.open("bench", {"study": "bench"}, uri, spool_dir=f"{tmp}/spool")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
              f"torch threads 1; store {uri}\n")

        rate = store_rate(uri, study.experiment_id)
        print(f"1. SQLite store write rate, log_batch of 1,000 values: {rate:,.0f} values/s\n"
              f"   values/s a trial sends = steps/s x (3 + layers / layer_every) "
              "(+ a few run-length points)")
        header = "".join(f"{'every ' + str(k):>12}" for k in CADENCES)
        print(f"   {'workload':<24}{'steps/s':>9}{'layers':>7}{header}")
        for label, steps_per_s, layers in workload_rates(60):
            sent = [steps_per_s * (3 + layers / k) for k in CADENCES]
            cells = "".join(f"{v:>8,.0f} {v / rate:>3.0%}" for v in sent)
            print(f"   {label:<24}{steps_per_s:>9,.0f}{layers:>7}{cells}")
        print("   (each cell: values/s, and the share of one store writer it takes); default: "
              f"every max(25, layers) steps, e.g. {auto_layer_every(16)} for 16 layers; plus "
              "grad_norm/global_log10 every step\n")

        print(f"2. one trial with tracking off vs on (default settings: plots only for "
              f"exploded trials; these are stable), {CONFIG}, median of {args.repeats} "
              "interleaved runs; target ratio <= 1.05x")
        compare(study, "deep_mlp", args.steps, args.repeats, plots=True)
        compare(study, "transformer_lm", max(20, args.steps // 3), args.repeats, plots=False)
        print()

        records = synthetic(2000, 20)
        print("3. time until a 20-layer x 2,000-step trace has landed (SQLite)")
        batched_s, batched_n = landed_batched(study, records, layer_every=1)
        print(f"   batched TrialTracker, every value:     {batched_s:8.2f} s for {batched_n:,} "
              f"values ({batched_n / batched_s:,.0f} values/s)")
        default_s, default_n = landed_batched(study, records, None)
        print(f"   batched, layers every {auto_layer_every(20)} steps (default):  "
              f"{default_s:8.2f} s for {default_n:,} values")
        naive_s, naive_n = landed_naive(study, records[:args.naive_steps])
        total = 2000 * 22
        print(f"   naive log_metric per value:            {naive_s * total / naive_n:8.2f} s for "
              f"{total:,} values (extrapolated from {naive_n:,} values in {naive_s:.2f} s, "
              f"{naive_n / naive_s:,.0f} values/s)")
        print(f"   batched is {naive_s * total / naive_n / batched_s:,.0f}x faster at full "
              "resolution")


if __name__ == "__main__":
    main()
