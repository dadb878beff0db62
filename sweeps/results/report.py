"""What a study found, read back from its Optuna storage: status, tables, a Markdown report.

:func:`study_status` is the data of ``stabsweep status`` (:func:`render_status` prints it);
:func:`write_report` writes the folder of ``stabsweep report``: ``report.md``, ``trials.csv``,
``history.png``, ``stability_map.png`` and ``importances.png``. The trials table and the
explosion-rate tables come from :mod:`sweeps.results._trials` and are re-exported here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sweeps.common import Outcome, keys
from sweeps.results._html import markdown_to_html
from sweeps.results._trials import (
    PARAM_PREFIX,
    compute_savings,
    explosion_rate_by_param,
    first_layer_of,
    outcome_of,
    study_spec,
    top_suggestion_of,
    trials_frame,
    verdict_kind_of,
)

if TYPE_CHECKING:
    import optuna
    from rich.console import Console

__all__ = [
    "PARAM_PREFIX",
    "ReportPaths",
    "compute_savings",
    "explosion_rate_by_param",
    "markdown_to_html",
    "render_status",
    "study_status",
    "trials_frame",
    "write_report",
]

MAX_DIAGNOSIS_LINES = 50
"""Exploded trials listed one per line in report.md; the rest are counted."""


# ------------------------------------------------------------------ status
def study_status(study: optuna.Study) -> dict[str, Any]:
    """A JSON-serialisable summary of the study.

    Keys: ``study``, ``direction``, ``metric`` (None without a stored spec), ``n_trials``,
    ``counts`` ({"outcome": {...}, "state": {...}}), ``best`` ({number, value, params} of the
    best complete trial that did not explode, or None), ``savings`` (:func:`compute_savings`,
    None without a stored spec) and ``trials`` (per trial: number, state, outcome, why,
    params, value, steps_run, skipped_updates; NaN becomes None).
    """
    from sweeps.results.export import best_trial

    df = trials_frame(study)
    spec = study_spec(study)
    best = best_trial(study, 1)
    trials = []
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for row in df.itertuples(index=False):
        trial = by_number[int(row.number)]
        trials.append({
            "number": trial.number, "state": trial.state.name, "outcome": row.outcome,
            "why": row.reason, "params": {k: _json_value(v) for k, v in trial.params.items()},
            "value": _json_value(float(row.value)),
            "steps_run": None if pd.isna(row.steps_run) else int(row.steps_run),
            "skipped_updates": (None if pd.isna(row.skipped_updates)
                                else int(row.skipped_updates))})
    return {
        "study": study.study_name,
        "direction": study.direction.name.lower(),
        "metric": spec.objective.metric if spec is not None else None,
        "n_trials": len(df),
        "counts": {"outcome": _counts(df["outcome"]), "state": _counts(df["state"])},
        "best": None if not best else {
            "number": best[0].number, "value": _json_value(best[0].value),
            "params": {k: _json_value(v) for k, v in best[0].params.items()}},
        "savings": compute_savings(df, spec.steps) if spec is not None else None,
        "trials": trials,
    }


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _counts(column: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in column.value_counts(sort=False).items()}


def render_status(status: Mapping[str, Any], console: Console) -> None:
    """Print :func:`study_status`'s dict: a summary, the best trial and a table of trials."""
    from rich.markup import escape
    from rich.table import Table

    counts = status["counts"]["outcome"]
    summary = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no trials yet"
    metric = status.get("metric") or "objective"
    console.print(f"[bold]{escape(status['study'])}[/]: {status['n_trials']} trials "
                  f"({summary}); {status['direction']} {metric}", highlight=False)
    best = status.get("best")
    if best is not None:
        console.print(f"best stable trial #{best['number']}: {metric} = {_fmt(best['value'])} "
                      f"({escape(_params(best['params']))})", highlight=False)
    else:
        console.print("no completed trial without an explosion yet", highlight=False)
    savings = status.get("savings")
    if savings and savings["steps_budget"]:
        console.print(f"steps run: {savings['steps_run']} of {savings['steps_budget']} "
                      f"({savings['fraction_saved']:.0%} saved by pruning)", highlight=False)
    # the outcome names the Optuna state (common.keys), so the table leaves the state to --json
    table = Table(caption="* best stable trial" if best is not None else None)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("steps", justify="right", no_wrap=True)
    table.add_column("params", overflow="fold", min_width=24)
    table.add_column("why", overflow="fold", ratio=1)
    best_number = best["number"] if best is not None else None
    for trial in status["trials"]:
        known = Outcome.parse(trial["outcome"])
        style = known.look.style if known is not None else ""
        outcome = escape(str(trial["outcome"]))
        table.add_row(f"{trial['number']}{'*' if trial['number'] == best_number else ''}",
                      f"[{style}]{outcome}[/]" if style else outcome, _fmt(trial["value"]),
                      _steps(trial),
                      escape("\n".join(f"{k}={_fmt(v)}" for k, v in trial["params"].items())),
                      escape(trial["why"] or ""))
    console.print(table)


def _steps(trial: dict[str, Any]) -> str:
    """Steps run, and the updates skipped on the way (``200, 1 skipped``)."""
    steps = "" if trial["steps_run"] is None else str(trial["steps_run"])
    skipped = trial.get("skipped_updates")
    return f"{steps}, {skipped} skipped" if skipped else steps


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


# ------------------------------------------------------------------ the report
@dataclass(slots=True)
class ReportPaths:
    """What :func:`write_report` wrote; a figure it could not draw is None (see ``notes``)."""

    out_dir: Path
    report_md: Path
    trials_csv: Path
    report_html: Path | None = None
    """report.md as one self-contained page (figures inlined): MLflow's artifact viewer
    renders it, figures included, where report.md shows its image links as text."""
    history: Path | None = None
    stability_map: Path | None = None
    importances: Path | None = None
    notes: list[str] = field(default_factory=list)


def write_report(study: optuna.Study, out_dir: str | Path) -> ReportPaths:
    """Write report.md, trials.csv and the figures of ``study`` into ``out_dir``."""
    from stability.plots import plot_stability_map
    from sweeps.results import _plots as figures
    from sweeps.results.export import best_trial

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"report folder {str(out)!r} is a file; give a folder path")
    out.mkdir(parents=True, exist_ok=True)
    df = trials_frame(study)
    spec = study_spec(study)
    metric = spec.objective.metric if spec is not None else "objective"
    direction = study.direction.name.lower()
    paths = ReportPaths(out_dir=out, report_md=out / "report.md", trials_csv=out / "trials.csv")
    df.to_csv(paths.trials_csv, index=False)
    if spec is None:
        paths.notes.append(f"the study has no valid {keys.STUDY_SPEC} attribute: no step "
                           "budget (savings) and params taken from the trials")
    if len(df):
        paths.history = figures.plot_history(df, out / "history.png", direction=direction,
                                             metric=metric, title=f"{study.study_name}: "
                                             f"optimisation history, {len(df)} trials")
    else:
        paths.notes.append("no history plot: the study has no trials")
    data = figures.map_frame(df, study, spec)
    if isinstance(data, str):
        paths.notes.append(data)
    else:
        paths.stability_map = plot_stability_map(
            data.frame, out / "stability_map.png", x=data.x, y=data.y,
            title=f"{study.study_name}: explosion probability, {len(data.frame)} trials")
        if data.note:
            paths.notes.append(data.note)
    importances = _importances(study, paths.notes)
    if importances:
        paths.importances = figures.plot_importances(importances, out / "importances.png",
                                                     metric=metric)
    text = _markdown(study, df, spec, best_trial(study, 1), importances, paths)
    paths.report_md.write_text(text, encoding="utf-8")
    paths.report_html = out / "report.html"
    paths.report_html.write_text(markdown_to_html(text, out, title=f"Study "
                                                  f"{study.study_name}"), encoding="utf-8")
    return paths


def _importances(study: optuna.Study, notes: list[str]) -> dict[str, float]:
    import optuna

    n = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if n < 2:
        notes.append(f"parameter importances skipped: they need >= 2 complete trials; the "
                     f"study has {n}")
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except Exception as exc:  # optuna refuses e.g. a space with no param common to all trials
        notes.append(f"parameter importances skipped: optuna raised {type(exc).__name__}: "
                     f"{' '.join(str(exc).split())}")
        return {}
    return {str(k): float(v) for k, v in found.items() if math.isfinite(v)}


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return _fmt(v).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows), ""]


def _markdown(study: optuna.Study, df: pd.DataFrame, spec: Any,
              best: list[optuna.trial.FrozenTrial], importances: Mapping[str, float],
              paths: ReportPaths) -> str:
    metric = spec.objective.metric if spec is not None else "objective"
    lines = [f"# Study `{study.study_name}`", ""]
    if spec is not None:
        lines += [f"{spec.description or 'stabsweep study'}: workload `{spec.workload.name}`, "
                  f"{spec.steps} steps per trial, {study.direction.name.lower()} `{metric}`.",
                  ""]
    counts = _counts(df["outcome"])
    order = [o for o in Outcome if o in counts] + sorted(set(counts) - set(Outcome))
    lines += ["## Summary", "", f"{len(df)} trials.", ""]
    lines += _table(["outcome", "trials"], [(o, counts[o]) for o in order])
    if spec is not None and len(df):
        s = compute_savings(df, spec.steps)
        lines += [f"Steps run: {s['steps_run']} of {s['steps_budget']} a sweep without "
                  f"pruning would have spent ({s['fraction_saved']:.1%} saved).", ""]
    lines += ["## Best trial", ""]
    if best:
        lines += [f"Trial {best[0].number}: `{metric}` = {_fmt(best[0].value)} "
                  "(complete, no explosion).", ""]
        lines += _table(["param", "value"], list(best[0].params.items()))
    else:
        lines += ["No completed trial without an explosion.", ""]
    params = [c[len(PARAM_PREFIX):] for c in df.columns if str(c).startswith(PARAM_PREFIX)]
    lines += ["## Explosion rate by parameter", "",
              "Exploded / (complete + exploded + slow) trials per value or range.", ""]
    for name, table in explosion_rate_by_param(df, params).items():
        lines += [f"### `{name}`", ""]
        lines += _table(["value", "trials", "exploded", "rate"],
                        [(r.bin, r.trials, r.exploded, "" if pd.isna(r.rate) else f"{r.rate:.2f}")
                         for r in table.itertuples(index=False)])
    lines += ["## Parameter importances", ""]
    if importances:
        lines += ["fANOVA over complete trials (params every complete trial used); exploded "
                  "trials are pruned, so see the explosion rates above for them.", ""]
        lines += _table(["param", "importance"], [(k, f"{v:.3f}") for k, v in
                                                   importances.items()])
    else:
        lines += [next((n for n in paths.notes if n.startswith("parameter importances")),
                       "not available"), ""]
    lines += _diagnoses(study)
    lines += ["## Figures", ""]
    for label, path in (("Optimisation history", paths.history),
                        ("Stability map", paths.stability_map),
                        ("Parameter importances", paths.importances)):
        if path is not None:
            lines += [f"![{label}]({path.name})", ""]
    lines += [f"All trials: [{paths.trials_csv.name}]({paths.trials_csv.name}).", ""]
    if paths.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in paths.notes), ""]
    return "\n".join(lines)


def _diagnoses(study: optuna.Study) -> list[str]:
    exploded = [t for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
                if outcome_of(t) == Outcome.EXPLODED]
    lines = ["## Diagnoses of exploded trials", ""]
    if not exploded:
        return [*lines, "No trial exploded.", ""]
    for trial in exploded[:MAX_DIAGNOSIS_LINES]:
        onset = trial.user_attrs.get(keys.ONSET_STEP)
        suggestion = top_suggestion_of(trial)
        lines.append(f"- trial {trial.number}: onset step {_fmt(onset) or 'unknown'}, first "
                     f"layer `{first_layer_of(trial) or 'unknown'}`, verdict "
                     f"`{verdict_kind_of(trial) or 'unknown'}`"
                     + (f"; suggested fix: {suggestion}" if suggestion else ""))
    if len(exploded) > MAX_DIAGNOSIS_LINES:
        lines.append(f"- ... and {len(exploded) - MAX_DIAGNOSIS_LINES} more (see trials.csv)")
    lines.append("")
    for what, values in (("first layers", [first_layer_of(t) for t in exploded]),
                         ("verdict kinds", [verdict_kind_of(t) for t in exploded])):
        common = Counter(v or "unknown" for v in values).most_common(5)
        lines.append(f"Most common {what}: " + ", ".join(f"`{k}` ({n})" for k, n in common)
                     + ".")
    return [*lines, ""]
