"""A study's trials as a table: the data behind ``stabsweep status`` and ``stabsweep report``.

Everything here reads the trial/study user attributes documented in :mod:`sweeps.common.keys`; a
trial without them (made outside stabsweep) still gets a row, its outcome taken from its state.

:func:`trials_frame` has one row per trial with these columns, then one ``params_<name>``
column per search-space param (Optuna's own ``trials_dataframe`` naming; NaN where the param
was inactive or the trial never suggested it):

=================  ===========================================================================
column             meaning
=================  ===========================================================================
number             Optuna trial number
state              COMPLETE, PRUNED, FAIL, RUNNING or WAITING
outcome            ``stabsweep.outcome``; else complete / slow / failed / running / waiting
reason             why the trial ended this way (one line; a failure's last error line)
value              objective value (NaN unless COMPLETE)
last_intermediate  last reported value (an exploded trial's is the ranking penalty)
steps_run          optimizer steps the trial ran
skipped_updates    updates the guard dropped (a spike, a non-finite step) and trained on past
attempt, retry_of  1 for a first run; retries name the trial they repeat
onset_step         explosion onset (exploded trials)
first_layer        first layer to blow up (exploded trials)
verdict_kind       the detector's verdict kind (exploded trials)
wall_time_s        seconds in the worker
exploded           outcome == "exploded"
=================  ===========================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sweeps.common import Outcome, keys

if TYPE_CHECKING:
    import optuna

    from sweeps.spec import SweepSpec

__all__ = [
    "PARAM_PREFIX",
    "RATED_OUTCOMES",
    "compute_savings",
    "explosion_rate_by_param",
    "first_layer_of",
    "outcome_of",
    "param_column",
    "reason_of",
    "skipped_of",
    "steps_accounting",
    "study_spec",
    "top_suggestion_of",
    "trials_frame",
    "verdict_kind_of",
]

PARAM_PREFIX = "params_"
BASE_COLUMNS = ("number", "state", "outcome", "reason", "value", "last_intermediate",
                "steps_run", "skipped_updates", "attempt", "retry_of", "onset_step",
                "first_layer", "verdict_kind", "wall_time_s", "exploded")
RATED_OUTCOMES = tuple(o for o in Outcome if o.finished)
"""Trials that ran to an end the sweep chose: the denominator of an explosion rate."""
_INT_COLUMNS = ("steps_run", "skipped_updates", "attempt", "retry_of", "onset_step")


# ------------------------------------------------------------------ one trial
def outcome_of(trial: optuna.trial.FrozenTrial) -> str:
    """The recorded :class:`Outcome`, or one read from the state (PRUNED without one:
    Optuna's pruner); a recorded word stabsweep does not know is kept as it is."""
    recorded = trial.user_attrs.get(keys.OUTCOME)
    if recorded:
        return Outcome.parse(recorded) or str(recorded)
    return Outcome.of_state(trial.state.name)


def skipped_of(trial: optuna.trial.FrozenTrial) -> int | None:
    """Updates the guard dropped in the trial: its own attribute, else its diagnosis's count
    (studies from before the attribute); None when neither is there."""
    skipped = trial.user_attrs.get(keys.SKIPPED)
    if skipped is None:
        diagnosis = trial.user_attrs.get(keys.DIAGNOSIS)
        skipped = diagnosis.get("skipped_count") if isinstance(diagnosis, dict) else None
    return None if skipped is None else int(skipped)


def reason_of(trial: optuna.trial.FrozenTrial) -> str:
    """One line on why the trial ended (empty for a plain complete trial)."""
    reason = trial.user_attrs.get(keys.REASON)
    if reason:
        return " ".join(str(reason).split())
    error = trial.user_attrs.get(keys.ERROR)
    if error:
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""
    if trial.state.name == "PRUNED":
        return "pruned by Optuna's pruner"
    return ""


def verdict_kind_of(trial: optuna.trial.FrozenTrial) -> str | None:
    verdict = trial.user_attrs.get(keys.VERDICT)
    if isinstance(verdict, Mapping) and verdict.get("kind"):
        return str(verdict["kind"])
    diagnosis = trial.user_attrs.get(keys.DIAGNOSIS)
    if isinstance(diagnosis, Mapping) and diagnosis.get("verdict_kind"):
        return str(diagnosis["verdict_kind"])
    return None


def first_layer_of(trial: optuna.trial.FrozenTrial) -> str | None:
    layer = trial.user_attrs.get(keys.FIRST_LAYER)
    if layer is None:
        diagnosis = trial.user_attrs.get(keys.DIAGNOSIS)
        layer = diagnosis.get("first_layer") if isinstance(diagnosis, Mapping) else None
    return None if layer is None else str(layer)


def top_suggestion_of(trial: optuna.trial.FrozenTrial) -> str | None:
    """The diagnosis's first suggested fix, as text."""
    diagnosis = trial.user_attrs.get(keys.DIAGNOSIS)
    if not isinstance(diagnosis, Mapping):
        return None
    suggestions = diagnosis.get("suggestions") or []
    if suggestions and isinstance(suggestions[0], Mapping) and suggestions[0].get("text"):
        return " ".join(str(suggestions[0]["text"]).split())
    return None


def _number(value: Any) -> float:
    """A float from an attribute (None, text such as 'nan' and junk become NaN)."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# ------------------------------------------------------------------ tables
def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, ordered by number; columns as in the module docstring."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    names: list[str] = []
    spec = study_spec(study)
    if spec is not None:
        names.extend(spec.space)
    for trial in trials:
        names.extend(n for n in trial.params if n not in names)
    rows = []
    for trial in trials:
        attrs = trial.user_attrs
        outcome = outcome_of(trial)
        last = (trial.intermediate_values[max(trial.intermediate_values)]
                if trial.intermediate_values else math.nan)
        row: dict[str, Any] = {
            "number": trial.number, "state": trial.state.name, "outcome": str(outcome),
            "reason": reason_of(trial),
            "value": _number(trial.value) if trial.state.name == "COMPLETE" else math.nan,
            "last_intermediate": _number(last),
            "steps_run": attrs.get(keys.STEPS_RUN), "skipped_updates": skipped_of(trial),
            "attempt": attrs.get(keys.ATTEMPT, 1),
            "retry_of": attrs.get(keys.RETRY_OF),
            "onset_step": attrs.get(keys.ONSET_STEP) if outcome == Outcome.EXPLODED else None,
            "first_layer": first_layer_of(trial) if outcome == Outcome.EXPLODED else None,
            "verdict_kind": verdict_kind_of(trial) if outcome == Outcome.EXPLODED else None,
            "wall_time_s": _number(attrs.get(keys.WALL_TIME)),
            "exploded": outcome == Outcome.EXPLODED,
        }
        for name in names:
            row[PARAM_PREFIX + name] = trial.params.get(name, math.nan)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*BASE_COLUMNS, *(PARAM_PREFIX + n for n in names)])
    for column in _INT_COLUMNS:
        frame[column] = pd.array(
            [None if _is_missing(v) else int(v) for v in frame[column]], dtype="Int64")
    frame["exploded"] = frame["exploded"].astype(bool)
    return frame


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def param_column(df: pd.DataFrame, name: str) -> str:
    """The column holding param ``name``: ``params_<name>``, or ``name`` itself."""
    for column in (PARAM_PREFIX + name, name):
        if column in df.columns:
            return column
    params = [c[len(PARAM_PREFIX):] for c in df.columns if str(c).startswith(PARAM_PREFIX)]
    raise KeyError(f"param {name!r} is not in the trials frame (no column {PARAM_PREFIX}{name} "
                   f"or {name}); params present: {', '.join(params) or '(none)'}")


def explosion_rate_by_param(df: pd.DataFrame, params: Sequence[str], bins: int = 5
                            ) -> dict[str, pd.DataFrame]:
    """Explosion rate per param value (categorical) or per range of a numeric param.

    Counts trials whose outcome is complete, exploded or slow (failed and running trials
    say nothing about stability). A numeric param with more than ``bins`` distinct values is
    cut into ``bins`` equal ranges, log-spaced when its values are positive and span 10x or
    more; ranges are ``[low, high)``, the last one closed. Trials where the param was
    inactive form an ``inactive`` row. Each table has columns bin, low, high (NaN for a
    category), trials, exploded and rate (NaN for an empty bin).
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1; got {bins!r}")
    for column in ("outcome", "exploded"):
        if column not in df.columns:
            raise KeyError(f"the trials frame needs column {column!r} (build it with "
                           "trials_frame); columns present: " + ", ".join(map(str, df.columns)))
    rated = df[df["outcome"].isin(RATED_OUTCOMES)]
    return {name: _rate_table(rated[param_column(df, name)], rated["exploded"].astype(bool),
                              bins) for name in params}


def _rate_table(values: pd.Series, exploded: pd.Series, bins: int) -> pd.DataFrame:
    active = values.notna()
    rows: list[tuple[str, float, float, int, int]] = []
    numeric = (pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values))
    x = values[active]
    boom = exploded[active].to_numpy(bool)
    if numeric and x.nunique() > bins:
        v = x.to_numpy(np.float64)
        lo, hi = float(v.min()), float(v.max())
        log = lo > 0 and hi >= 10 * lo
        edges = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
        edges[0], edges[-1] = lo, hi
        index = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, bins - 1)
        for i in range(bins):
            inside = index == i
            close = "]" if i == bins - 1 else ")"
            rows.append((f"[{edges[i]:.3g}, {edges[i + 1]:.3g}{close}", float(edges[i]),
                         float(edges[i + 1]), int(inside.sum()), int(boom[inside].sum())))
    else:
        keys_ = list(pd.unique(x))
        if numeric:
            keys_.sort()
        for key in keys_:
            inside = (x == key).to_numpy(bool)
            rows.append((str(key), math.nan, math.nan, int(inside.sum()),
                         int(boom[inside].sum())))
    if (~active).any():
        rows.append(("inactive", math.nan, math.nan, int((~active).sum()),
                     int(exploded[~active].sum())))
    table = pd.DataFrame(rows, columns=["bin", "low", "high", "trials", "exploded"])
    with np.errstate(invalid="ignore", divide="ignore"):
        table["rate"] = np.where(table["trials"] > 0,
                                 table["exploded"] / table["trials"].where(table["trials"] > 0),
                                 np.nan)
    return table


def steps_accounting(state: str, steps_run: Any, steps_per_trial: int) -> tuple[int, int]:
    """(steps the trial ran, steps a sweep without pruning would have spent on it).

    A COMPLETE or PRUNED trial would have run every step; a FAIL trial (the workload raised,
    its worker was lost, the sweep was interrupted) stops where it stopped with or without
    pruning, so it counts as the steps it ran on both sides. A missing ``steps_run`` counts as
    every step (COMPLETE/PRUNED: no saving claimed) or none (FAIL).
    """
    missing = _is_missing(steps_run)
    if state == "FAIL":
        steps = 0 if missing else max(0, min(int(steps_run), steps_per_trial))
        return steps, steps
    steps = steps_per_trial if missing else max(0, min(int(steps_run), steps_per_trial))
    return steps, steps_per_trial


def compute_savings(df: pd.DataFrame, steps_per_trial: int) -> dict[str, Any]:
    """Steps the finished trials ran against ``n_trials x steps_per_trial`` without pruning.

    RUNNING and WAITING trials are left out; each other trial counts as
    :func:`steps_accounting` says (a FAIL trial as the steps it ran, on both sides: pruning saved
    nothing there). ``saved_by_outcome`` splits the saving between explosion pruning and
    Optuna's pruner.
    """
    if isinstance(steps_per_trial, bool) or not isinstance(steps_per_trial, int) or (
            steps_per_trial < 1):
        raise ValueError(f"steps_per_trial must be an integer >= 1; got {steps_per_trial!r}")
    done = df[~df["state"].isin(("RUNNING", "WAITING"))]
    pairs = [steps_accounting(state, s, steps_per_trial)
             for state, s in zip(done["state"], done["steps_run"], strict=True)]
    run = [r for r, _ in pairs]
    budget = sum(b for _, b in pairs)
    saved_by: dict[str, int] = {}
    for outcome, (steps, spent) in zip(done["outcome"], pairs, strict=True):
        if steps < spent:
            saved_by[str(outcome)] = saved_by.get(str(outcome), 0) + spent - steps
    total = int(sum(run))
    return {"trials": len(done), "steps_per_trial": steps_per_trial, "steps_run": total,
            "steps_budget": budget, "steps_saved": budget - total,
            "fraction_saved": (budget - total) / budget if budget else 0.0,
            "saved_by_outcome": saved_by}


def study_spec(study: optuna.Study) -> SweepSpec | None:
    """The study's SweepSpec (user attr ``stabsweep.spec``), or None when absent or invalid."""
    from sweeps.spec import SpecError, parse_spec

    data = study.user_attrs.get(keys.STUDY_SPEC)
    if data is None:
        return None
    try:
        return parse_spec(data, source=f"study {study.study_name!r}")
    except SpecError:
        return None
