"""Scoring detectors on the labelled corpus: verdicts, outcomes per policy, tuning.

Used by ``benchmarks/detection_quality.py``. A policy's composite is replayed over each run's
trace of that policy (``stop``: the free trace; ``skip``: the skip trace), member by member,
so a tuning search scores a change of one member by indexing cached verdicts.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from _common import median
from _dq_corpus import Run, trained_below_start

from stability.detectors import DEFAULT_DETECTORS, SKIP_DETECTORS, Detector, default_detector

Verdicts = list[tuple[int, str] | None]
POLICIES = ("stop", "skip")
MEMBERS = {"stop": DEFAULT_DETECTORS, "skip": SKIP_DETECTORS}
LOSS_RULES = ("loss_divergence",)
NONFINITE_RULES = ("nonfinite",)


def is_gradient_rule(kind: str) -> bool:
    """Rules that read gradient norms (or skipped / overflowed steps), not the loss."""
    return kind not in LOSS_RULES + NONFINITE_RULES


def records_of(run: Run, policy: str) -> list[Any]:
    return run.skip_records if policy == "skip" else run.records


def first_verdicts(make: Callable[[], Detector], runs: Sequence[Run], policy: str) -> Verdicts:
    """(step, kind) of the first verdict of a fresh detector on each run's trace, or None."""
    out: Verdicts = []
    for run in runs:
        detector = make()
        found = None
        for record in records_of(run, policy):
            verdict = detector.observe(record.step, record)
            if verdict is not None:
                found = (verdict.step, verdict.kind)
                break
        out.append(found)
    return out


def combine(per_kind: dict[str, Verdicts]) -> Verdicts:
    """The composite's first verdict from each member's own first verdict (members observe
    every step independently; the earliest wins, ties go to the member listed first)."""
    kinds = list(per_kind)
    n = len(per_kind[kinds[0]]) if kinds else 0
    out: Verdicts = []
    for i in range(n):
        hits = [v for k in kinds if (v := per_kind[k][i]) is not None]
        out.append(min(hits, key=lambda v: v[0]) if hits else None)
    return out


# ---------------------------------------------------------------------------- metrics
@dataclass
class Metrics:
    policy: str = "stop"
    exploded: int = 0
    setbacks: int = 0
    fine: int = 0
    """recovered + healthy runs: a verdict on one is a false flag."""
    stopped: int = 0
    rescued: int = 0
    """skip: an exploding config that was never stopped and trained to a finite loss below
    its start."""
    missed: int = 0
    caught_setbacks: int = 0
    false_flags: int = 0
    to_nonfinite: int = 0
    before_nonfinite: int = 0
    """of the runs that reach a non-finite loss: stopped before it (or rescued, for skip)."""
    ahead: int = 0
    """exploded runs whose first verdict came >= 1 step before the label's blow-up."""
    ahead_gradient: int = 0
    """... and that verdict came from a gradient rule."""
    lead_blowup: list[int] = field(default_factory=list)
    flag_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def recall(self) -> float:
        return _share(self.stopped + self.rescued, self.exploded)

    @property
    def false_flag_rate(self) -> float:
        return _share(self.false_flags, self.fine)

    @property
    def before_share(self) -> float:
        return _share(self.before_nonfinite, self.to_nonfinite)

    def row(self, name: str) -> list[Any]:
        outcome = f"{self.stopped} stopped"
        if self.policy == "skip":
            outcome += f", {self.rescued} rescued"
        outcome += f", {self.missed} missed"
        return [name, f"{self.exploded}/{self.setbacks}/{self.fine}", outcome,
                _pct(self.recall), f"{_pct(self.false_flag_rate)} ({self.false_flags})",
                f"{_pct(self.before_share)} ({self.before_nonfinite}/{self.to_nonfinite})",
                f"{_pct(_share(self.ahead, self.exploded))} ({self.ahead})",
                f"{_pct(_share(self.ahead_gradient, self.exploded))} ({self.ahead_gradient})",
                _med(self.lead_blowup), f"{self.caught_setbacks}/{self.setbacks}"]


HEADERS = ["", "expl/setback/fine", "exploded runs", "recall", "false flags",
           "before NaN", ">=1 step before blow-up", "... by a gradient rule",
           "median lead", "setbacks caught"]


def metrics(runs: Sequence[Run], verdicts: Sequence[tuple[int, str] | None],
            policy: str) -> Metrics:
    m = Metrics(policy)
    for run, verdict in zip(runs, verdicts, strict=True):
        if run.label in ("recovered", "healthy"):
            m.fine += 1
            if verdict is not None:
                m.false_flags += 1
                m.flag_kinds[verdict[1]] = m.flag_kinds.get(verdict[1], 0) + 1
            continue
        if run.label == "setback":
            m.setbacks += 1
            m.caught_setbacks += verdict is not None
            continue
        m.exploded += 1
        rescued = (verdict is None and policy == "skip"
                   and trained_below_start(run.skip_loss))
        if run.nonfinite_step is not None:
            m.to_nonfinite += 1
            m.before_nonfinite += rescued or (
                verdict is not None and verdict[0] < run.nonfinite_step)
        if verdict is None:
            m.rescued += rescued
            m.missed += not rescued
            continue
        m.stopped += 1
        assert run.blowup_step is not None
        lead = run.blowup_step - verdict[0]
        m.lead_blowup.append(lead)
        if lead >= 1:
            m.ahead += 1
            m.ahead_gradient += is_gradient_rule(verdict[1])
    return m


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def _share(k: int, n: int) -> float:
    return k / n if n else math.nan


def _med(values: list[int]) -> str:
    return "-" if not values else f"{median(values):g}"


# ---------------------------------------------------------------------------- tuning
GRID: dict[str, dict[str, dict[str, Sequence[Any]]]] = {
    "stop": {
        "nonfinite": {"max_overflow_streak": (12, 32)},
        "ceiling": {"ratio": (1e2, 1e3, 1e4, 1e5)},
        "spike": {"z_threshold": (4.0, 6.0, 8.0), "patience": (3, 5), "min_ratio": (2.0, 5.0)},
        "median_ratio": {"ratio": (10.0, 20.0, 50.0), "patience": (3, 5)},
        "growth": {"min_ratio": (10.0, 30.0, 100.0), "min_slope": (0.1, 0.2)},
        "loss_divergence": {"patience": (3, 5, 10, 20, 40), "regress": (0.5, 1.0)},
    },
    "skip": {
        "growth": {"min_ratio": (10.0, 30.0, 100.0), "min_slope": (0.1, 0.2)},
        "loss_divergence": {"patience": (3, 5, 10, 20, 40), "regress": (0.5, 1.0),
                            "initial_patience": (1, 2, 3, 5, 10, 20)},
    },
}
"""Settings searched per member of each policy's composite; the others keep their defaults.
``loss_divergence.patience`` and ``initial_patience`` are the windows a loss rise (over its
best, over 10x its start) has to last to be a verdict."""
MAX_FALSE_FLAG_RATE = 0.01


def shipped_settings(policy: str) -> dict[str, dict[str, Any]]:
    """Each member's settings in the policy's shipped composite (``default_detector``), read
    back from the built detectors (every constructor argument is kept as an attribute)."""
    built = default_detector(on_spike=policy).detectors
    out = {}
    for kind, detector in zip(MEMBERS[policy], built, strict=True):
        names = [n for n in inspect.signature(type(detector)).parameters if n != "self"]
        out[kind] = {n: getattr(detector, n) for n in names}
    return out


class Tuner:
    """Coordinate search over a policy's GRID from its shipped defaults; each member's
    verdicts are replayed once over every run and cached, so a subset of runs (a split) is
    scored by indexing."""

    def __init__(self, runs: Sequence[Run], policy: str) -> None:
        self.runs, self.policy = runs, policy
        self.members = MEMBERS[policy]
        self._shipped = shipped_settings(policy)
        self._cache: dict[tuple[str, str], Verdicts] = {}

    def start(self, kind: str) -> dict[str, Any]:
        return dict(self._shipped[kind])

    def shipped(self) -> dict[str, dict[str, Any]]:
        return {kind: self.start(kind) for kind in self.members}

    def points(self, kind: str) -> list[dict[str, Any]]:
        points: list[dict[str, Any]] = [{}]
        for key, values in GRID[self.policy].get(kind, {}).items():
            points = [{**p, key: v} for p in points for v in values]
        return [{**self.start(kind), **p} for p in points]

    def verdicts(self, kind: str, params: dict[str, Any]) -> Verdicts:
        key = (kind, json.dumps(params, sort_keys=True))
        if key not in self._cache:
            cls = self.members[kind]
            self._cache[key] = first_verdicts(lambda: cls(**params), self.runs, self.policy)
        return self._cache[key]

    def composite(self, chosen: dict[str, dict[str, Any]], idx: Sequence[int]) -> Verdicts:
        per_kind = {k: [self.verdicts(k, chosen[k])[i] for i in idx] for k in self.members}
        return combine(per_kind)

    def score(self, chosen: dict[str, dict[str, Any]], idx: Sequence[int]) -> Metrics:
        return metrics([self.runs[i] for i in idx], self.composite(chosen, idx), self.policy)

    def tune(self, idx: Sequence[int], rounds: int = 2) -> dict[str, dict[str, Any]]:
        chosen = self.shipped()
        for _ in range(rounds):
            for kind in GRID[self.policy]:
                best: tuple[tuple[Any, ...], dict[str, Any]] | None = None
                for params in self.points(kind):
                    m = self.score({**chosen, kind: params}, idx)
                    score = objective(m, params == self.start(kind))
                    if best is None or score > best[0]:
                        best = (score, params)
                assert best is not None
                chosen[kind] = best[1]
        return chosen

    def changes(self, chosen: dict[str, dict[str, Any]]) -> str:
        """The chosen values that differ from the shipped defaults."""
        out = [f"{kind}.{a}={v}" for kind, params in chosen.items()
               for a, v in params.items() if v != self.start(kind)[a]]
        return ", ".join(out) or "the shipped defaults"


def objective(m: Metrics, is_default: bool) -> tuple[Any, ...]:
    """Lexicographic, larger is better: within the false-flag budget, recall, the share
    stopped before NaN, fewer false flags, setbacks caught, the share flagged before the
    blow-up, more exploding configs rescued (trained on) than stopped; ties keep the
    shipped value."""
    within = m.false_flag_rate <= MAX_FALSE_FLAG_RATE
    return (within, round(m.recall, 6), round(_nz(m.before_share), 6), -m.false_flags,
            m.caught_setbacks, m.ahead, m.rescued, is_default)


def _nz(x: float) -> float:
    return 0.0 if x != x else x
