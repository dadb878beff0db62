"""Runs that never learned: the threshold of the diagnosis, decided on labelled runs.

    python benchmarks/never_learned.py        # the detection corpus (cached), 10 families

The corpus is ``detection_quality.py``'s (the same cache): every config trained to its end
with no detector. The runs that did not explode (by its label) are labelled here from what the
rule never reads: the *held-out eval loss* at the end against the *constant-prediction loss*
of the task (the variance of the eval targets for a regression, the entropy of the eval labels
for a classifier or language model). A run *never learned* when its eval loss is above 0.9x
that constant (it explains under 10 % of what a constant leaves).

The rule (``stability.diagnose.stall_ratio``) reads the training loss only: the median of the
last quarter over the median of the first 5 losses. Its threshold is chosen on the tuning
families (the built-ins and scaled_mlp: the largest recall with at most 2 % of the runs that
learned called "never learned"), and scored on the six held-out families. A second variant
divides by the constant-prediction loss instead of the start, for callers that know it
(``diagnose(..., baseline=...)``).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from _common import table
from _dq_corpus import FAMILIES, Run, RunSpec, _workload, load_runs, make_corpus, make_run
from detection_quality import HELD_OUT, TUNE

from stability.diagnose import NEVER_LEARNED_RATIO, stall_ratio

LABEL_RATIO = 0.9
MAX_WRONG = 0.02
CANDIDATES = tuple(round(x, 2) for x in np.arange(0.2, 0.96, 0.05))


def _entropy(labels: torch.Tensor) -> float:
    counts = torch.bincount(labels.reshape(-1).long()).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def _variance(targets: torch.Tensor) -> float:
    y = targets.double().reshape(targets.shape[0], -1)
    return float(((y - y.mean(0)) ** 2).mean())


def constant_loss(spec: RunSpec) -> float:
    """The eval loss of the best constant prediction for the run's task."""
    w: Any = _workload(spec)
    family = spec.family
    if family in ("deep_mlp", "rnn_adding"):
        return _variance(w.eval_set[1])
    if family == "cnn_digits":
        return _entropy(w.eval_set[1])
    if family == "transformer_lm":
        return _entropy(w.eval_windows[:, 1:])
    if family in ("scaled_mlp", "teacher", "gated_rnn"):
        return _variance(w._eval[1])
    if family in ("faulty_mlp", "attn_stack"):
        return _entropy(w._eval[1])
    if family == "attn_spike":
        tokens = w._eval[0]
        return _entropy(tokens[:, spec.args["half"]:])
    raise ValueError(f"no constant baseline for {family}")


def train_units(spec: RunSpec) -> float:
    """What the training loss is multiplied by against the task's mean loss (scaled_mlp
    trains on ``scale`` x the batch's summed squared error)."""
    if spec.family == "scaled_mlp":
        return float(spec.args["scale"] * spec.args.get("batch_size", 64))
    return 1.0


def score(rows: Sequence[tuple[Run, float, float, bool]], threshold: float, with_base: bool
          ) -> tuple[int, int, int, int]:
    """(never learned caught, of, learned called never learned, of)."""
    caught = stuck = wrong = learned = 0
    for _, ratio, against, label in rows:
        value = against if with_base else ratio
        flagged = value > threshold
        if label:
            stuck += 1
            caught += flagged
        else:
            learned += 1
            wrong += flagged
    return caught, stuck, wrong, learned


def choose(rows: Sequence[tuple[Run, float, float, bool]], with_base: bool) -> float:
    best = (-1.0, 1.0)
    for t in CANDIDATES:
        caught, stuck, wrong, learned = score(rows, t, with_base)
        if wrong <= MAX_WRONG * learned and caught / max(stuck, 1) > best[0]:
            best = (caught / max(stuck, 1), t)
    return best[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-family", type=int, default=40)
    parser.add_argument("--any-cache", action="store_true",
                        help="use the newest corpus cache even if the training code changed")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    specs = make_corpus(args.per_family)
    loaded = [load_runs(specs, mode, refresh=False, workers=args.workers,
                        any_cache=args.any_cache) for mode in ("free", "skip")]
    rows: list[tuple[Run, float, float, bool]] = []
    for free, skip in zip(*loaded, strict=True):
        if "error" in free or "error" in skip:
            continue
        run = make_run(free, skip)
        if run.label == "exploded" or not math.isfinite(run.eval_loss):
            continue
        base = constant_loss(run.spec)
        rows.append((run, stall_ratio(run.loss),
                     stall_ratio(run.loss, base * train_units(run.spec)),
                     run.eval_loss > LABEL_RATIO * base))
    tune = [r for r in rows if r[0].spec.family in TUNE]
    held = [r for r in rows if r[0].spec.family in HELD_OUT]
    print(f"\n{len(rows)} runs that did not explode; never learned (eval loss > "
          f"{LABEL_RATIO}x the constant-prediction loss), per family:")
    print(table(["family", "split", "runs", "never learned", "rule value (late/start) of "
                 "those: min..max", "of the others: max"],
                [[f, "tune" if f in TUNE else "held out", len(sub), sum(r[3] for r in sub),
                  _span([r[1] for r in sub if r[3]]), _span([r[1] for r in sub if not r[3]], 1)]
                 for f in FAMILIES if (sub := [r for r in rows if r[0].spec.family == f])]))
    out = []
    for with_base, name in ((False, "late loss / start"), (True, "late loss / constant")):
        chosen = choose(tune, with_base)
        for split, sub in (("tuning split", tune), ("HELD OUT", held)):
            caught, stuck, wrong, learned = score(sub, chosen, with_base)
            out.append([name, chosen, split, f"{caught}/{stuck}",
                        f"{100 * caught / max(stuck, 1):.0f}%", f"{wrong}/{learned}",
                        f"{100 * wrong / max(learned, 1):.1f}%"])
    print(f"\nThe threshold, chosen on {', '.join(TUNE)} (largest recall with <= "
          f"{MAX_WRONG:.0%} of the learned runs flagged), scored on {', '.join(HELD_OUT)}:")
    print(table(["rule", "threshold", "split", "never learned caught", "recall",
                 "learned runs flagged", "rate"], out))
    print(f"\nshipped: stability.diagnose.NEVER_LEARNED_RATIO = {NEVER_LEARNED_RATIO}")
    threshold = NEVER_LEARNED_RATIO
    print("  wrong calls at the shipped threshold (held out): "
          + "; ".join(f"{r[0].spec.family} {'never learned' if r[3] else 'learned'} "
                      f"late/start {r[1]:.2f} eval {r[0].eval_loss:.3g}"
                      for r in held if (r[1] > threshold) != r[3]))
    for t in CANDIDATES:
        c1, s1, w1, l1 = score(tune, t, False)
        c2, s2, w2, l2 = score(held, t, False)
        print(f"  late/start > {t:.2f}: tune {c1}/{s1} caught, {w1}/{l1} wrong; held out "
              f"{c2}/{s2} caught, {w2}/{l2} wrong")
    return 0


def _span(values: list[float], which: int | None = None) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "-"
    if which == 1:
        return f"{max(finite):.2f}"
    return f"{min(finite):.2f}..{max(finite):.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
