"""One command that checks the GPU path: precision, guard overhead, host syncs, skip exactness,
a compiled model and (where Ray is importable) a sweep on fractional GPUs.

    python benchmarks/gpu_check.py             # on a GPU: the sizes of issue 18, ~3-4 minutes
    python benchmarks/gpu_check.py --tiny      # tiny sizes (what CI smoke-tests on CPU)
    python benchmarks/gpu_check.py --out DIR   # also write the table as gpu_check.md / .json

It needs torch, numpy, pandas and pyyaml only: a GPU machine may lack Ray, Optuna and MLflow,
so it imports ``stability/`` alone (the sweep row runs only where Ray is importable). Without a
CUDA device it runs everything on the CPU with a note, at tiny sizes unless told otherwise.

What it prints, as one table:
- every built-in workload x precision trained through ``stability.trainer.train``;
- guard overhead: a bare loop (fused AdamW + ``clip_grad_norm_``, autocast for bf16) against
  ``StabilityGuard`` at ``sync_every`` 10 and 1 and against the guard's eager step (the path
  before the CUDA-graph step), median of paired ratios over interleaved repeats, with CUDA
  kernels and host-side launches per step (profiler over 10 steps);
- synchronising CUDA calls per 100 steps (``torch.cuda.set_sync_debug_mode("warn")``);
- skip exactness: a non-finite gradient at step 15 and a x1e6 gradient spike at step 40 leave
  the weights bit-identical to a run that never saw those batches (fused AdamW and SGD, fp32,
  bf16, fp16);
- a ``torch.compile``d model under the guard: step time and clean layer names.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from _common import ROOT, SMALL, table

from stability.config import StabilityConfig
from stability.guard import StabilityGuard
from stability.optim import build_optimizer
from stability.trainer import train
from stability.workloads import load_workload

WORKLOADS = ("deep_mlp", "rnn_adding", "cnn_digits", "transformer_lm")
PRECISIONS = ("fp32", "bf16", "fp16", "fp16_noscale")
TARGET = 1.03
BENCH = StabilityConfig(optimizer="adamw", lr=1e-4, clip_method="norm", clip_threshold=1.0)
"""Stable at every size below, so the guard never drops an update (which would flatter it)."""

OVERHEAD_ROWS: list[tuple[str, str, dict[str, Any], str]] = [
    ("deep_mlp 12 x 2048", "deep_mlp", {"depth": 12, "width": 2048, "batch_size": 256}, "fp32"),
    ("transformer_lm 4 x 256", "transformer_lm",
     {"n_layers": 4, "d_model": 256, "n_heads": 4, "seq_len": 128, "batch_size": 32}, "fp32"),
    ("transformer_lm 12 x 768", "transformer_lm",
     {"n_layers": 12, "d_model": 768, "n_heads": 12, "seq_len": 256, "batch_size": 32}, "fp32"),
    ("transformer_lm 12 x 768", "transformer_lm",
     {"n_layers": 12, "d_model": 768, "n_heads": 12, "seq_len": 256, "batch_size": 32}, "bf16"),
]
TINY_ROWS: list[tuple[str, str, dict[str, Any], str]] = [
    ("deep_mlp (tiny)", "deep_mlp", SMALL["deep_mlp"], "fp32"),
    ("transformer_lm (tiny)", "transformer_lm", SMALL["transformer_lm"], "fp32"),
    ("transformer_lm (tiny)", "transformer_lm", SMALL["transformer_lm"], "bf16"),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------- 1. precision
def precision_rows(device: torch.device, tiny: bool, steps: int) -> list[list[Any]]:
    """Every workload x precision through ``train()``: ok with its eval loss, or the error."""
    rows = []
    for name in WORKLOADS:
        args = SMALL[name] if tiny else {}
        for precision in PRECISIONS:
            config = StabilityConfig(optimizer="adamw", lr=1e-3, precision=precision)
            start = time.perf_counter()
            try:
                result = train(name, config, steps=steps, device=device, workload_args=args)
            except Exception as exc:  # the row reports it; the check goes on
                line = f"{type(exc).__name__}: {exc}".splitlines()[0][:70]
                rows.append(["precision", f"{name} {precision}", "FAIL", line])
                continue
            ms = (time.perf_counter() - start) / max(result.steps_run, 1) * 1e3
            verdict = result.verdict.kind if result.verdict else "no verdict"
            rows.append(["precision", f"{name} {precision}", "ok",
                         f"eval_loss {result.final_eval['eval_loss']:.4f}, {verdict}, "
                         f"{result.steps_run} steps, {ms:.1f} ms/step incl. eval"])
    return rows


# ---------------------------------------------------------------------- 2. overhead
class Variant:
    """One loop of the overhead rows: bare, or the guard at a sync cadence / eager step."""

    def __init__(self, name: str, workload: Any, batches: list[Any], precision: str,
                 device: torch.device, sync_every: int | None, device_step: bool | None) -> None:
        self.name, self.workload, self.batches = name, workload, batches
        self.model = workload.model()
        self.position = 0
        self.device = device
        config = BENCH.replace(precision=precision)
        self.guard: StabilityGuard | None = None
        self.step: Callable[[Any], None]
        if sync_every is None:
            self.optimizer = build_optimizer(self.model.parameters(), config)
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
            self.autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                             else nullcontext())
            self.step = self._bare
        else:
            self.guard = StabilityGuard(self.model, config, sync_every=sync_every,
                                        apply_init=False, device_step=device_step)
            self.step = self._guarded

    def _bare(self, batch: Any) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            loss = self.workload.loss(self.model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), BENCH.clip_threshold)
        self.optimizer.step()

    def _guarded(self, batch: Any) -> None:
        assert self.guard is not None
        self.guard.step(self.workload.loss(self.model, batch))

    def run(self, steps: int) -> float:
        """Wall seconds for ``steps`` steps, the device drained before and after."""
        sync(self.device)
        start = time.perf_counter()
        n = len(self.batches)
        for _ in range(steps):
            self.step(self.batches[self.position % n])
            self.position += 1
        if self.guard is not None:
            self.guard.sync()
        sync(self.device)
        return time.perf_counter() - start


def bare_step_ms(variant: Variant) -> float:
    return variant.run(3) / 3 * 1e3


def count_launches(variant: Variant, steps: int = 10) -> tuple[float, float]:
    """(CUDA kernels, host-side kernel/graph launches) per step, from the profiler."""
    if variant.device.type != "cuda":
        return float("nan"), float("nan")
    from torch.profiler import ProfilerActivity, profile

    variant.run(steps)  # align to a sync boundary and warm the profiler's path
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        variant.run(steps)
    kernels = launches = 0
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels += event.count
        elif event.key.startswith(("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch",
                                   "cudaLaunchCooperativeKernel")):
            launches += event.count
    return kernels / steps, launches / steps


def overhead_rows(device: torch.device, tiny: bool, steps: int, repeats: int
                  ) -> list[list[Any]]:
    rows = []
    for label, name, args, precision in (TINY_ROWS if tiny else OVERHEAD_ROWS):
        workload = load_workload(name, seed=0, device=device, **args)
        stream = iter(workload.batches())
        batches = [next(stream) for _ in range(16)]
        variants = [
            Variant("bare", workload, batches, precision, device, None, None),
            Variant("guard, sync 10", workload, batches, precision, device, 10, None),
            Variant("guard, sync 1", workload, batches, precision, device, 1, None),
            Variant("guard eager step, sync 10", workload, batches, precision, device, 10,
                    False),
        ]
        for variant in variants:
            variant.run(30)  # warm-up: allocator, cuBLAS, the guard's capture (at step 26)
        # a step of 10 ms or more is device-bound: fewer, shorter repeats say the same
        n, reps = steps, repeats
        if bare_step_ms(variants[0]) >= 10 and not tiny:
            n, reps = max(5, steps // 3), max(5, (repeats * 2) // 3)
        times: dict[str, list[float]] = {v.name: [] for v in variants}
        for r in range(reps):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for variant in order:
                times[variant.name].append(variant.run(n))
        counts = {v.name: count_launches(v) for v in variants}
        bare = times["bare"]
        bare_ms = statistics.median(bare) / n * 1e3
        k0, l0 = counts["bare"]
        cuda = device.type == "cuda"
        rows.append(["overhead", f"{label} {precision}: bare", f"{bare_ms:.2f} ms/step",
                     f"{k0:.0f} kernels, {l0:.0f} launches per step" if cuda else
                     "kernels: no CUDA device"])
        for variant in variants[1:]:
            ratios = sorted(g / b for g, b in zip(times[variant.name], bare, strict=True))
            ratio = statistics.median(ratios)
            spread = f"{ratios[len(ratios) // 4]:.3f}-{ratios[(3 * len(ratios)) // 4]:.3f}"
            kernels, launches = counts[variant.name]
            guard = variant.guard
            assert guard is not None
            if guard.verdict is not None:
                raise RuntimeError(f"{label}: the guard fired ({guard.verdict}); the overhead "
                                   "rows need a stable config.")
            mode = ("CUDA graph" if guard.device_step is not None
                    and guard.device_step.graph is not None else
                    "fused, eager" if guard.device_step is not None else "eager")
            mark = ("" if variant.name.startswith("guard eager") or device.type != "cuda"
                    else " ok" if ratio <= TARGET else " ABOVE 1.03x")
            rows.append(["overhead", f"{label} {precision}: {variant.name}",
                         f"{ratio:.3f}x{mark}",
                         f"IQR {spread}; " + (f"{kernels - k0:+.0f} kernels, "
                                              f"{launches - l0:+.0f} launches per step vs "
                                              "bare; " if cuda else "") + f"step: {mode}"])
        del variants
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------- 3. syncs
def sync_rows(device: torch.device) -> list[list[Any]]:
    """Synchronising CUDA calls per 100 guarded steps, after a 50-step warm-up."""
    if device.type != "cuda":
        return [["syncs", "per 100 steps", "n/a", "no CUDA device: nothing to count"]]
    rows = []
    args = {"depth": 8, "width": 256, "batch_size": 64}
    for precision in ("fp32", "bf16", "fp16"):
        found = []
        for sync_every in (10, 1):
            workload = load_workload("deep_mlp", seed=0, device=device, **args)
            model = workload.model()
            config = BENCH.replace(precision=precision)
            guard = StabilityGuard(model, config, sync_every=sync_every, apply_init=False)
            stream = iter(workload.batches())
            batches = [next(stream) for _ in range(16)]
            for i in range(50):
                guard.step(workload.loss(model, batches[i % 16]))
            guard.sync()
            torch.cuda.synchronize()
            gc.collect()  # freeing an earlier guard's CUDA graph here would count as a sync
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    for i in range(100):
                        guard.step(workload.loss(model, batches[i % 16]))
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            found.append(sum("synchroniz" in str(w.message) for w in caught))
        rows.append(["syncs", f"per 100 steps, {precision}", f"{found[0]} / {found[1]}",
                     "sync_every 10 / 1 (expected 10 / 100)"])
    return rows


# ---------------------------------------------------------------------- 4. skip exactness
def _exact_run(device: torch.device, optimizer: str, precision: str, skip_bad: bool,
               steps: int, device_step: bool | None = None
               ) -> tuple[list[torch.Tensor], StabilityGuard]:
    workload = load_workload("deep_mlp", seed=0, device=device, depth=6, width=64,
                             batch_size=32)
    model = workload.model()
    config = StabilityConfig(optimizer=optimizer, lr=1e-3 if optimizer == "adamw" else 1e-2,
                             momentum=0.9, precision=precision)
    guard = StabilityGuard(model, config, sync_every=10, apply_init=False,
                           device_step=device_step)
    stream = iter(workload.batches())
    params = list(model.parameters())
    for i in range(steps):
        batch = next(stream)
        if i in (15, 40):
            if skip_bad:
                continue
            factor = float("inf") if i == 15 else 1e6
            hooks = [p.register_hook(lambda g, f=factor: g * f)
                     for p in (params[:1] if i == 15 else params)]
            guard.step(workload.loss(model, batch))
            for hook in hooks:
                hook.remove()
            continue
        guard.step(workload.loss(model, batch))
    guard.close()
    assert guard.verdict is None, f"the exactness run stopped: {guard.verdict}"
    return [p.detach().clone() for p in params], guard


def exactness_rows(device: torch.device, steps: int) -> list[list[Any]]:
    rows = []
    for optimizer in ("adamw", "sgd"):
        for precision in ("fp32", "bf16", "fp16"):
            seen, _ = _exact_run(device, optimizer, precision, False, steps)
            never, _ = _exact_run(device, optimizer, precision, True, steps)
            diff = max(float((a - b).abs().max()) for a, b in zip(seen, never, strict=True))
            rows.append(["skip exactness", f"fused {optimizer} {precision}",
                         "bit-identical" if diff == 0 else f"max |diff| {diff:.2e}",
                         f"inf grad at step 15, x1e6 spike at 40, {steps} steps vs a run "
                         "without those batches"])
    # the guard's CUDA-graph step against its eager step: the same trace and weights
    fused, a = _exact_run(device, "adamw", "fp32", False, steps, None)
    eager, b = _exact_run(device, "adamw", "fp32", False, steps, False)
    ta, tb = (t.trace().drop(columns="lr").astype("float64") for t in (a, b))
    trace_diff = float((ta - tb).abs().max().max())
    weight_diff = max(float((x - y).abs().max()) for x, y in zip(fused, eager, strict=True))
    mode = ("CUDA graph" if a.device_step is not None and a.device_step.graph is not None
            else "fused, eager" if a.device_step is not None else "eager")
    rows.append(["skip exactness", f"guard step ({mode}) vs eager step, adamw fp32",
                 "identical" if trace_diff == 0 and weight_diff == 0 else
                 f"max |diff| trace {trace_diff:.2e}, weights {weight_diff:.2e}",
                 f"same injections, {steps} steps, skipped {a.skipped_count} / "
                 f"{b.skipped_count}"])
    return rows


# ---------------------------------------------------------------------- 5. compile
def compile_rows(device: torch.device, tiny: bool, steps: int) -> list[list[Any]]:
    args = (SMALL["transformer_lm"] if tiny else
            {"n_layers": 4, "d_model": 256, "n_heads": 4, "seq_len": 128, "batch_size": 32})
    precision = "bf16"
    workload = load_workload("transformer_lm", seed=0, device=device, **args)
    plain = StabilityGuard(workload.model(), StabilityConfig(precision=precision),
                           apply_init=False)
    model = workload.model()
    # inductor needs a C++ toolchain on the CPU and minutes of compiling there: the CPU
    # fallback checks the names with the eager backend (same wrapper, same parameter names)
    backend = "inductor" if device.type == "cuda" else "eager"
    compiled = torch.compile(model, backend=backend)
    guard = StabilityGuard(compiled, BENCH.replace(precision=precision), apply_init=False)
    stream = iter(workload.batches())
    for _ in range(10):  # compiles
        guard.step(workload.loss(compiled, next(stream)))
    guard.sync()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        guard.step(workload.loss(compiled, next(stream)))
    guard.sync()
    sync(device)
    ms = (time.perf_counter() - start) / steps * 1e3
    leaked = [n for n in guard.layer_names if "_orig_mod" in n]
    same = list(guard.layer_names) == list(plain.layer_names)
    return [["compile", f"torch.compile({backend}) transformer_lm {precision}",
             "ok" if same and not leaked else "LAYER NAMES DIFFER",
             f"{ms:.1f} ms/step; layers {guard.layer_names[0]} .. {guard.layer_names[-1]}"
             f"{'' if same else ' (plain: ' + plain.layer_names[0] + ')'}"]]


# ---------------------------------------------------------------------- 6. sweep
def sweep_rows(device: torch.device) -> list[list[Any]]:
    """A real sweep on 4 workers at 0.25 GPU each, where Ray (and the CLI) are installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return [["sweep", "4 workers x 0.25 GPU", "skipped", "Ray is not importable here"]]
    if device.type != "cuda":
        return [["sweep", "4 workers x 0.25 GPU", "skipped", "no CUDA device"]]
    cli = shutil.which("stabsweep") or str(Path(sys.executable).with_name("stabsweep"))
    samples: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True, timeout=5).stdout.split()
                samples.append(float(out[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return

    with tempfile.TemporaryDirectory() as tmp:
        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        start = time.perf_counter()
        proc = subprocess.run(
            [cli, "run", str(ROOT / "examples" / "quick.yaml"), "--workers", "4",
             "--gpus-per-trial", "0.25", "--no-tracking", "--storage",
             f"sqlite:///{tmp}/gpu_check.db"], capture_output=True, text=True, cwd=tmp,
            timeout=240, env={**os.environ, "CI": "true"})
        elapsed = time.perf_counter() - start
        done.set()
        thread.join()
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return [["sweep", "4 workers x 0.25 GPU", f"FAIL (exit {proc.returncode})", tail[0]]]
    match = re.search(r"trials\s+(\d+) finished", proc.stdout)
    finished = int(match.group(1)) if match else 0
    use = statistics.mean(samples) if samples else float("nan")
    return [["sweep", "4 workers x 0.25 GPU, examples/quick.yaml", "ok",
             f"{elapsed:.0f} s, ~{finished / elapsed * 60:.1f} trials/min, mean GPU use "
             f"{use:.0f}%"]]


# ---------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes (the default without a CUDA device)")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved timed repeats")
    parser.add_argument("--only", nargs="+", default=None,
                        choices=("precision", "overhead", "syncs", "exactness", "compile",
                                 "sweep"), help="run only these sections")
    parser.add_argument("--out", type=Path, default=None, help="write the table here too")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1.")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    tiny = args.tiny or not cuda
    if cuda:
        name = torch.cuda.get_device_name(device)
        print(f"torch {torch.__version__}, {name}, {'tiny' if tiny else 'full'} sizes")
    else:
        torch.set_num_threads(1)
        print(f"torch {torch.__version__}: no CUDA device, so this runs on the CPU at tiny "
              "sizes (a smoke test: kernel counts, syncs and the GPU overhead target do not "
              "apply)")
    steps, repeats = (min(args.steps, 10), min(args.repeats, 3)) if tiny else (
        args.steps, args.repeats)
    sections: list[tuple[str, Callable[[], list[list[Any]]]]] = [
        ("precision", lambda: precision_rows(device, tiny, 12 if tiny else 30)),
        ("overhead", lambda: overhead_rows(device, tiny, steps, repeats)),
        ("syncs", lambda: sync_rows(device)),
        ("exactness", lambda: exactness_rows(device, 50)),
        ("compile", lambda: compile_rows(device, tiny, steps)),
        ("sweep", lambda: sweep_rows(device)),
    ]
    rows: list[list[Any]] = []
    start = time.perf_counter()
    for key, section in sections:
        if args.only and key not in args.only:
            continue
        t0 = time.perf_counter()
        try:
            rows.extend(section())
        except Exception as exc:  # one broken section must not hide the others
            rows.append([key, "(section)", "ERROR",
                         f"{type(exc).__name__}: {exc}".splitlines()[0][:90]])
        print(f"  {key}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    text = table(["check", "case", "result", "figures"], rows, left=(0, 1, 2, 3))
    print(text)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.md").write_text(text + "\n")
        (args.out / "gpu_check.json").write_text(json.dumps(
            {"device": torch.cuda.get_device_name(device) if cuda else "cpu",
             "torch": torch.__version__, "rows": rows}, indent=1))
    failed = [r for r in rows if str(r[2]).startswith(("FAIL", "ERROR", "LAYER"))]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
