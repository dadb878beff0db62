"""Overhead of StabilityGuard against a bare loop that clips with ``clip_grad_norm_``.

    python benchmarks/monitor_overhead.py               # default workload sizes, 1 thread
    python benchmarks/monitor_overhead.py --small       # the CPU-cheap sizes of the corpus
    python benchmarks/monitor_overhead.py --profile     # where the guard's time goes

Bare: ``zero_grad -> forward -> loss -> backward -> clip_grad_norm_ -> opt.step``.
Guarded: the same model, optimizer and batches under ``StabilityGuard`` (per-layer norms,
the default detectors, norm clipping; lr schedule ``constant``), at ``sync_every`` 1 (the CPU
default: one host read per step) and 10. The variants run interleaved in one process
(bare, guard/1, guard/10, then the next repeat in rotated order) after a warm-up, on batches
generated beforehand, so data generation, clock drift and other load hit them alike.

Steps/s are per CPU second of this process (``time.process_time``; torch runs its CPU work
on the calling thread at one intra-op thread), which a busy shared machine disturbs far less
than wall time; ``--wall`` reports wall-clock rates instead. The ratio is the median over
repeats of (bare rate / guarded rate) of the same repeat: a paired figure, so slow phases of
the machine cancel out.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from _common import SMALL, median, table

from stability.config import StabilityConfig
from stability.guard import StabilityGuard
from stability.optim import build_optimizer
from stability.workloads import load_workload

WORKLOADS = ("deep_mlp", "rnn_adding", "transformer_lm")
TARGET, AIM = 1.05, 1.02
CONFIG = StabilityConfig(optimizer="adam", lr=1e-3, clip_method="norm", clip_threshold=1.0)
"""Stable on every workload, so the guard never stops updating (which would flatter it)."""


class Loop:
    """One variant: a model, its optimizer (or guard) and a pre-generated batch list."""

    def __init__(self, name: str, workload_name: str, args: dict[str, Any],
                 batches: list[Any], sync_every: int | None) -> None:
        self.name = name
        self.workload = load_workload(workload_name, seed=0, **args)
        self.model = self.workload.model()
        self.batches = batches
        self.position = 0
        self.guard: StabilityGuard | None = None
        if sync_every is None:
            self.optimizer = build_optimizer(self.model.parameters(), CONFIG)
            self.step: Callable[[Any], None] = self._bare
        else:
            self.guard = StabilityGuard(self.model, CONFIG, sync_every=sync_every,
                                        apply_init=False)
            self.step = self._guarded

    def _bare(self, batch: Any) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.workload.loss(self.model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CONFIG.clip_threshold)
        self.optimizer.step()

    def _guarded(self, batch: Any) -> None:
        assert self.guard is not None
        self.guard.step(self.workload.loss(self.model, batch))

    def run(self, steps: int) -> tuple[float, float]:
        """CPU and wall seconds for ``steps`` optimizer steps (the guard flushed at the end)."""
        batches, n = self.batches, len(self.batches)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(steps):
            self.step(batches[self.position % n])
            self.position += 1
        if self.guard is not None:
            self.guard.sync()
        return time.process_time() - cpu, time.perf_counter() - wall


def measure(workload: str, args: dict[str, Any], *, steps: int, repeats: int,
            warmup: int, wall: bool = False) -> dict[str, list[float]]:
    """steps/s of each variant per repeat, interleaved (per CPU second, or wall second)."""
    source = load_workload(workload, seed=0, **args)
    stream = iter(source.batches())
    batches = [next(stream) for _ in range(64)]
    loops = [Loop("bare", workload, args, batches, None),
             Loop("guard/1", workload, args, batches, 1),
             Loop("guard/10", workload, args, batches, 10)]
    for loop in loops:
        loop.run(warmup)
    rates: dict[str, list[float]] = {loop.name: [] for loop in loops}
    for r in range(repeats):
        order = loops[r % len(loops):] + loops[:r % len(loops)]
        for loop in order:
            cpu_s, wall_s = loop.run(steps)
            rates[loop.name].append(steps / (wall_s if wall else cpu_s))
    for loop in loops:
        if loop.guard is not None and loop.guard.verdict is not None:
            raise RuntimeError(f"{workload}: the guard fired ({loop.guard.verdict}); the "
                               "benchmark needs a stable config.")
    return rates


class _Timer:
    """Per-call wall times (ns) of wrapped callables, by section name."""

    def __init__(self) -> None:
        self.times: dict[str, list[int]] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                self.times.setdefault(name, []).append(time.perf_counter_ns() - start)
        return timed

    def per_step(self, name: str, steps: int) -> float:
        """Microseconds per optimizer step (the sum over calls, divided by the steps)."""
        return sum(self.times.get(name, [])) / steps / 1e3


def breakdown(workload: str, args: dict[str, Any], *, steps: int) -> list[list[Any]]:
    """Microseconds per step of each part of the bare and the guarded (sync 1) step.

    The guard's parts are timed by wrapping its components on the instance (monitor,
    clipper, sync, detector, optimizer, scheduler); "rest of guard.step" is what remains of
    ``guard.step`` (loss bookkeeping, the trace row, Python glue). Steps alternate between
    the two loops so load hits both alike.
    """
    source = load_workload(workload, seed=0, **args)
    stream = iter(source.batches())
    batches = [next(stream) for _ in range(64)]
    bare = Loop("bare", workload, args, batches, None)
    guarded = Loop("guard", workload, args, batches, 1)
    bare.run(20)
    guarded.run(20)
    timer = _Timer()
    guard = guarded.guard
    assert guard is not None
    watcher = guard.watcher  # measure, clip and sync are the watcher's parts of the step
    watcher.monitor.measure = timer.wrap("measure (per-layer norms)", watcher.monitor.measure)
    watcher.clipper = timer.wrap("clip (reuses the norms)", watcher.clipper)
    watcher.sync = timer.wrap("sync (host read + records)", watcher.sync)
    watcher.detector.observe = timer.wrap("  of which detectors", watcher.detector.observe)
    guard.optimizer.step = timer.wrap("g optimizer.step", guard.optimizer.step)
    guard.optimizer.zero_grad = timer.wrap("g zero_grad", guard.optimizer.zero_grad)
    guard.scheduler.step = timer.wrap("scheduler.step", guard.scheduler.step)
    guard_step = timer.wrap("g step", guard.step)
    backward = torch.autograd.backward
    for i in range(steps):
        batch = batches[i % len(batches)]
        loss = source.loss(guarded.model, batch)
        torch.autograd.backward = timer.wrap("g backward", backward)
        try:
            guard_step(loss)
        finally:
            torch.autograd.backward = backward
        t0 = time.perf_counter_ns()
        bare.optimizer.zero_grad(set_to_none=True)
        t1 = time.perf_counter_ns()
        loss = source.loss(bare.model, batch)
        loss.backward()
        t2 = time.perf_counter_ns()
        torch.nn.utils.clip_grad_norm_(bare.model.parameters(), CONFIG.clip_threshold)
        t3 = time.perf_counter_ns()
        bare.optimizer.step()
        t4 = time.perf_counter_ns()
        for name, ns in (("b zero_grad", t1 - t0), ("b clip_grad_norm_", t3 - t2),
                         ("b optimizer.step", t4 - t3)):
            timer.times.setdefault(name, []).append(ns)
    us = {name: timer.per_step(name, steps) for name in timer.times}
    parts = ("measure (per-layer norms)", "clip (reuses the norms)", "sync (host read + records)",
             "g optimizer.step", "g zero_grad", "scheduler.step", "g backward")
    rest = us["g step"] - sum(us.get(p, 0.0) for p in parts)
    rows = [
        ["clip_grad_norm_ / measure + clip", us["b clip_grad_norm_"],
         us["measure (per-layer norms)"] + us["clip (reuses the norms)"]],
        ["  measure (per-layer norms)", "", us["measure (per-layer norms)"]],
        ["  clip (reuses the norms)", "", us["clip (reuses the norms)"]],
        ["sync (host read + records + detectors)", "", us["sync (host read + records)"]],
        ["  of which detectors", "", us.get("  of which detectors", 0.0)],
        ["scheduler.step", "", us.get("scheduler.step", 0.0)],
        ["rest of guard.step (loss, trace row, glue)", "", rest],
        ["optimizer.step", us["b optimizer.step"], us["g optimizer.step"]],
        ["zero_grad", us["b zero_grad"], us["g zero_grad"]],
    ]
    return [[name, *(f"{v:.1f}" if isinstance(v, float) else v for v in vals)]
            for name, *vals in rows]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the corpus' CPU-cheap sizes")
    parser.add_argument("--steps", type=int, default=50, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=21, help="timed repeats per variant")
    parser.add_argument("--wall", action="store_true", help="wall-clock rates, not CPU time")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS),
                        choices=WORKLOADS, help="which workloads")
    parser.add_argument("--profile", action="store_true",
                        help="also time each part of the bare and the guarded step")
    args = parser.parse_args(argv)
    for name in ("steps", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1; got {getattr(args, name)}.")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), "
          f"{'small' if args.small else 'default'} workload sizes, {args.repeats} repeats x "
          f"{args.steps} steps, medians, per {'wall' if args.wall else 'CPU'} second")
    rows = []
    for workload in args.workloads:
        wargs = SMALL[workload] if args.small else {}
        rates = measure(workload, wargs, steps=args.steps, repeats=args.repeats,
                        warmup=args.warmup, wall=args.wall)
        bare = median(rates["bare"])
        for variant in ("guard/1", "guard/10"):
            guarded = median(rates[variant])
            ratios = sorted(b / g for b, g in zip(rates["bare"], rates[variant], strict=True))
            ratio = median(ratios)
            quartiles = f"{ratios[len(ratios) // 4]:.3f}-{ratios[(3 * len(ratios)) // 4]:.3f}"
            verdict = "ok" if ratio <= AIM else ("within target" if ratio <= TARGET
                                                 else "ABOVE TARGET")
            rows.append([workload, variant.replace("guard/", "sync_every "), f"{bare:.1f}",
                         f"{guarded:.1f}", f"{ratio:.3f}x", quartiles, verdict])
    print(table(["workload", "guard", "bare steps/s", "guarded steps/s", "ratio (median)",
                 "ratio IQR", f"target <={TARGET}x (aim {AIM}x)"], rows))
    if args.profile:
        for workload in args.workloads:
            wargs = SMALL[workload] if args.small else {}
            print(f"\n{workload}: microseconds per step, 300 steps alternating (wall time; "
                  "parts of a busy machine's step, read them as a guide)")
            print(table(["part", "bare", "guarded (sync 1)"],
                        breakdown(workload, wargs, steps=300)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
