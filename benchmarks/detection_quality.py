"""Detection quality on model families the detectors were never tuned on.

    python benchmarks/detection_quality.py             # 10 families x 40 runs (cached)
    python benchmarks/detection_quality.py --quick     # 10 families x 4 runs: a smoke test
    python benchmarks/detection_quality.py --refresh   # re-run the corpus, ignore the cache

**The corpus** (``_dq_corpus.py``). Ten model families: the four built-in workloads and six
written to break detectors (``_families.py``: gradient scales from 2^-8 to 2^14, a loss that
trains to near zero and bumps, one-step data faults, gated recurrent nets, pre/post-LN
attention; ``_attn_spike.py``: a causal transformer with the small-scale instabilities of
Wortsman et al. 2023, attention-logit growth without qk-layernorm and output-logit divergence,
whose loss spikes and often comes back). Per run a seeded config: optimizer, lr from stable to
explosive, norm clipping, warm-up, schedule, init, precision fp32 / bf16 / fp16.

**The label is not a detector.** Every config is trained to its end with no detector and
labelled from its loss alone: *exploded* (non-finite, or above 10x its step-0 value; the
*blow-up* is the first such step), *setback* (the smoothed loss rose above 2x its best and the
run ends there), *recovered* (it rose and came back) or *healthy*. A verdict on a recovered or
healthy run is a false flag.

**Two policies**, each replayed over its own trace: ``stop`` over the run trained with
``on_spike: stop``; ``skip`` over the same config trained with ``on_spike: skip`` (the guard
drops spiking updates on device whatever the detector says, so the replay is the live run).
An exploding config under skip ends one of three ways: *stopped* (a verdict), *rescued*
(never stopped, and trained to a finite loss below its start), or *missed*.

**Tuned on one split, scored on the other.** Both policies' thresholds (``_dq_score.GRID``,
including the window a loss rise must last) are chosen by a coordinate search on the tuning
families only (``TUNE``); ``HELD_OUT`` (among them the attention-spike family) is scored with
what that search chose, which is what the detectors ship. Beside it, leave one family out: each
family scored with thresholds tuned on the nine others.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from _common import median, table
from _dq_corpus import (
    FAMILIES,
    OUTCOMES,
    STEPS,
    Run,
    load_runs,
    make_corpus,
    make_run,
    rolling_median,
)
from _dq_score import (
    HEADERS,
    POLICIES,
    Metrics,
    Tuner,
    Verdicts,
    first_verdicts,
    metrics,
)

from stability.detectors import DEFAULT_DETECTORS

TUNE = ("deep_mlp", "rnn_adding", "transformer_lm", "cnn_digits", "scaled_mlp")
HELD_OUT = ("teacher", "faulty_mlp", "gated_rnn", "attn_stack", "attn_spike")
WINDOWS = (1, 3, 5, 10, 20, 40)


def describe(runs: Sequence[Run]) -> None:
    rows = []
    for family in (*FAMILIES, None):
        sub = [r for r in runs if family is None or r.spec.family == family]
        counts = [sum(r.label == o for r in sub) for o in OUTCOMES]
        rows.append([family or "all", "tune" if family in TUNE else "held out" if family
                     else "", len(sub), *counts,
                     sum(r.nonfinite_step is not None for r in sub),
                     sum(bool(any(x.skipped for x in r.skip_records)) for r in sub),
                     f"{sum(r.seconds for r in sub):.0f}"])
    print(table(["family", "split", "runs", *OUTCOMES, "reach NaN/inf", "skip run skipped",
                 "train s"], rows))


def own_onset(loss: np.ndarray, rule: str) -> int | None:
    """Where the rise a loss rule reacts to began in a run's own loss: for the 10x-start rule
    the first loss above 10x the first (or non-finite), for the from-best rule the first step
    the smoothed loss is above 2x its best so far."""
    if rule == "initial_patience":
        with np.errstate(invalid="ignore"):
            blown = ~np.isfinite(loss) | (loss > 10.0 * abs(loss[0]))
        return int(np.argmax(blown)) if blown.any() else None
    smooth = rolling_median(np.where(np.isfinite(loss), loss, np.inf), 9)
    rose = smooth > 2.0 * np.minimum.accumulate(smooth)
    return int(np.argmax(rose)) if rose.any() else None


def window_table(tuner: Tuner, idx: Sequence[int], name: str, rule: str) -> list[list[Any]]:
    """A loss rule's window (``rule``: loss_divergence.patience or .initial_patience; every
    other threshold as shipped) against what it costs and buys."""
    rows = []
    for window in WINDOWS:
        chosen = tuner.shipped()
        chosen["loss_divergence"] = {**chosen["loss_divergence"], rule: window}
        runs = [tuner.runs[i] for i in idx]
        verdicts = tuner.composite(chosen, idx)
        m = metrics(runs, verdicts, tuner.policy)
        after, loss_flags = [], 0
        for run, v in zip(runs, verdicts, strict=True):
            if v is None or v[1] != "loss_divergence":
                continue
            loss_flags += run.label in ("recovered", "healthy")
            onset = own_onset(run.loss if tuner.policy == "stop" else run.skip_loss, rule)
            if run.label in ("setback", "exploded") and onset is not None and v[0] >= onset:
                after.append(v[0] - onset)
        rows.append([f"{name}, {rule} {window}", f"{loss_flags}/{m.fine}",
                     f"{m.false_flags}/{m.fine}", f"{m.stopped}/{m.rescued}/{m.missed}",
                     f"{m.before_nonfinite}/{m.to_nonfinite}",
                     f"{m.caught_setbacks}/{m.setbacks}",
                     f"{median(after):g}" if after else "-", max(after, default=0)])
    return rows


WINDOW_HEADERS = ["", "loss-rule false flags", "all false flags", "exploding: stopped/"
                  "rescued/missed", "before NaN", "setbacks", "median steps after onset",
                  "max"]


def lead_frontier(tuner: Tuner, idx: Sequence[int], name: str) -> list[list[Any]]:
    """Gradient rules alone, loosened step by step: how many exploding runs each flags >= 1
    step before the blow-up, at what cost in false flags."""
    rules: list[tuple[str, dict[str, Any]]] = [
        ("median_ratio", {"ratio": r, "patience": p, "warmup": 8, "window": 32})
        for r in (3.0, 5.0, 10.0) for p in (1, 2)]
    rules += [("spike", {"z_threshold": z, "patience": p, "min_ratio": 2.0, "warmup": 8})
              for z in (3.0, 4.0) for p in (1, 2)]
    rules += [("growth", {"min_ratio": r, "min_slope": 0.1, "warmup": 8, "window": 8})
              for r in (3.0, 10.0)]
    runs = [tuner.runs[i] for i in idx]
    rows = []
    for kind, params in rules:
        cls = DEFAULT_DETECTORS[kind]
        v = first_verdicts(lambda cls=cls, params=params: cls(**params), runs, "stop")
        m = metrics(runs, v, "stop")
        ahead = sum(1 for r, x in zip(runs, v, strict=True) if r.label == "exploded"
                    and x is not None and r.blowup_step is not None and x[0] < r.blowup_step)
        label = ", ".join(f"{k} {val:g}" for k, val in params.items() if k != "warmup")
        rows.append([f"{name}: {kind} {label}", f"{ahead}/{m.exploded}",
                     f"{100 * ahead / max(m.exploded, 1):.0f}%",
                     f"{m.false_flags}/{m.fine}", f"{100 * m.false_flag_rate:.1f}%"])
    return rows


def warning_before_blowup(runs: Sequence[Run], idx: Sequence[int], name: str) -> list[Any]:
    """How much warning the gradients give: when the exploded runs blow up (step 1 is the
    first update's loss: nothing came before it to warn), and for those that blow up after
    step 20, the global norm one step before the blow-up over its median of the 20 before."""
    ratios = []
    for i in idx:
        run = runs[i]
        b = run.blowup_step
        if run.label != "exploded" or b is None or b < 21:
            continue
        norms = np.array([r.global_norm for r in run.records[b - 21:b]])
        base = np.median(norms[:-1][np.isfinite(norms[:-1])]) if np.isfinite(
            norms[:-1]).any() else np.nan
        ratios.append(norms[-1] / base if base > 0 and np.isfinite(norms[-1]) else np.inf)
    r = np.array(ratios)
    blowups = [runs[i].blowup_step or 0 for i in idx if runs[i].label == "exploded"]
    return [name, len(blowups), sum(b <= 1 for b in blowups), sum(b <= 5 for b in blowups),
            sum(b < 21 for b in blowups), len(r),
            *(f"{int((r >= k).sum())} ({100 * (r >= k).mean():.0f}%)" if r.size else "-"
              for k in (2.0, 3.0, 10.0)), f"{np.median(r):.2f}" if r.size else "-"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 runs per family: a smoke test")
    parser.add_argument("--per-family", type=int, default=40, help="runs per family (40)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the config list")
    parser.add_argument("--refresh", action="store_true", help="re-run, ignore the cache")
    parser.add_argument("--any-cache", action="store_true",
                        help="use the newest cache even if the training code changed since")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    per_family = 4 if args.quick else args.per_family
    if per_family < 1 or args.workers < 1:
        parser.error("--per-family and --workers must be >= 1")
    start = time.perf_counter()
    specs = make_corpus(per_family, args.seed)
    loaded = {mode: load_runs(specs, mode, refresh=args.refresh, workers=args.workers,
                              any_cache=args.any_cache) for mode in ("free", "skip")}
    runs = []
    for free, skip in zip(loaded["free"], loaded["skip"], strict=True):
        if "error" in free or "error" in skip:
            bad = free if "error" in free else skip
            print(f"  left out, the run raised: {bad['spec']['family']} "
                  f"{bad['spec']['config']}: {bad['error'][:120]}")
            continue
        runs.append(make_run(free, skip))
    print(f"\n{len(runs)} runs, {STEPS} steps each; labels from each run's own loss, trained "
          "to its end with no detector:")
    describe(runs)
    everything = range(len(runs))
    tune_idx = [i for i in everything if runs[i].spec.family in TUNE]
    held_idx = [i for i in everything if runs[i].spec.family in HELD_OUT]
    spike_idx = [i for i in everything if runs[i].spec.family == "attn_spike"]

    rows: list[list[Any]] = []
    per_family: dict[str, list[list[Any]]] = {}
    tuners: dict[str, Tuner] = {}
    for policy in POLICIES:
        tuner = tuners[policy] = Tuner(runs, policy)
        chosen = tuner.tune(tune_idx)
        print(f"\n{policy}: tuned on {', '.join(TUNE)}: {tuner.changes(chosen)}")
        shipped = tuner.shipped()
        lofo: Verdicts = [None] * len(runs)
        for family in FAMILIES:
            test = [i for i in everything if runs[i].spec.family == family]
            fold = tuner.tune([i for i in everything if runs[i].spec.family != family])
            for i, v in zip(test, tuner.composite(fold, test), strict=True):
                lofo[i] = v
        rows += [
            tuner.score(shipped, tune_idx).row(f"{policy}, tuning split (shipped)"),
            tuner.score(chosen, held_idx).row(f"{policy}, HELD OUT, tuned on the other split"),
            tuner.score(chosen, spike_idx).row(f"{policy}, held out: attn_spike alone"),
            metrics(runs, lofo, policy).row(f"{policy}, each family left out (10 folds)"),
        ]
        per_family[policy] = [
            tuner.score(chosen, [i for i in everything if runs[i].spec.family == f]).row(
                f"{f}{' (held out)' if f in HELD_OUT else ''}") for f in FAMILIES]

    print("\nSummary (exploded / setback / recovered+healthy runs). recall: stopped, or for "
          "skip rescued, of the exploding configs; before NaN: of the runs that reach a "
          "non-finite loss, stopped before it (or rescued); lead: the label's blow-up step "
          "minus the first verdict's:")
    print(table(HEADERS, rows))
    for policy in POLICIES:
        print(f"\n{policy} policy per family, with the thresholds tuned on {', '.join(TUNE)}:")
        print(table(HEADERS, per_family[policy]))

    print("\nThe window a loss rise must last to be a verdict: loss_divergence.patience (a rise "
          "over the best) and .initial_patience (over 10x the start), every other threshold "
          "as shipped. Steps after onset: from where the rise began in the run's own loss to "
          "the loss rule's verdict, on the exploding and setback runs it stopped:")
    wrows = []
    for policy in POLICIES:
        tuner = tuners[policy]
        for rule in ("patience", "initial_patience"):
            wrows += window_table(tuner, tune_idx, f"{policy}, tune", rule)
            wrows += window_table(tuner, held_idx, f"{policy}, held out", rule)
    print(table(WINDOW_HEADERS, wrows))

    print("\nLead from gradient rules alone (stop traces; each rule on its own, loosened): "
          "exploding runs flagged >= 1 step before the blow-up, and false flags on fine runs:")
    lrows = lead_frontier(tuners["stop"], tune_idx, "tune")
    lrows += lead_frontier(tuners["stop"], held_idx, "held out")
    print(table(["rule", "ahead of blow-up", "share", "false flags", "rate"], lrows))
    print("\nWarning in the gradients (stop traces, exploded runs): when they blow up, and for "
          "those after step 20, the global norm one step before the blow-up over its median "
          "of the 20 steps before:")
    print(table(["split", "exploded", "blow up at step 1", "by step 5", "before step 21",
                 "after", "of those: >= 2x", ">= 3x", ">= 10x", "median ratio"],
                [warning_before_blowup(runs, tune_idx, "tune"),
                 warning_before_blowup(runs, held_idx, "held out")]))

    print("\nWhich rule gave the verdict (shipped thresholds, all runs; exploded / setback / "
          "false flag):")
    kinds: dict[str, list[int]] = {}
    for policy in POLICIES:
        tuner = tuners[policy]
        verdicts = tuner.composite(tuner.shipped(), list(everything))
        for run, v in zip(runs, verdicts, strict=True):
            if v is not None:
                kinds.setdefault(f"{policy}: {v[1]}", [0, 0, 0])[
                    0 if run.label == "exploded" else 1 if run.label == "setback" else 2] += 1
        for run, v in zip(runs, verdicts, strict=True):
            if v is not None and run.label in ("recovered", "healthy"):
                print(f"  false flag, {policy}: {v[1]} at step {v[0]} on a {run.label} run "
                      f"{run.spec.run_id} {run.spec.family} {run.spec.args} {run.spec.config}")
    print(table(["policy: rule", "exploded", "setback", "false flag"],
                [[k, *v] for k, v in sorted(kinds.items())]))
    _skip_costs(runs, tuners["skip"])
    print(f"\nTotal {time.perf_counter() - start:.0f} s.")
    return 0


def _skip_costs(runs: Sequence[Run], tuner: Tuner) -> None:
    """What skipping did to the runs it did not stop: rescued configs and fine runs."""
    verdicts = tuner.composite(tuner.shipped(), list(range(len(runs))))
    fine_skipped = worse = 0
    skipped_steps: list[int] = []
    for run, v in zip(runs, verdicts, strict=True):
        n = sum(r.skipped for r in run.skip_records)
        if v is None and run.label == "exploded" and n:
            skipped_steps.append(n)
        if run.label in ("recovered", "healthy") and v is None and n:
            fine_skipped += 1
            free_end = float(np.median(run.loss[-20:]))
            worse += bool(np.median(run.skip_loss[-20:]) > 1.1 * free_end + 1e-6)
    m: Metrics = metrics(runs, verdicts, "skip")
    print(f"\nskip: {m.rescued} exploding configs rescued (not stopped, ended below their "
          f"start), after a median of {median(skipped_steps) if skipped_steps else 0:g} "
          f"skipped steps; {fine_skipped} fine runs had skipped steps, {worse} of them ended "
          "more than 10% above the same config without skipping.")


if __name__ == "__main__":
    raise SystemExit(main())
