"""Opening a study: create or resume the one a spec describes, find one by name, and close
the trials a stopped driver left running.

The driver is the only process that creates or ends trials (ask / tell), so a study's state
is what the last driver wrote. Rerunning a spec resumes its study: the space, workload, steps
and objective it was created with must be the spec's (the study keeps a signature of them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, Trial, TrialState

from mlflow_setup.uri import redact
from sweeps.common import Outcome, SweepError, keys
from sweeps.spec import SweepSpec, make_pruner, make_sampler, resume_seed
from sweeps.store.storage import default_storage_url, sqlite_path

__all__ = ["StudyNotFound", "finished_count", "load_study", "open_study", "recover_stale",
           "retry"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class StudyNotFound(SweepError):
    """No study of that name where the user looked: the message lists what is there."""


def open_study(spec: SweepSpec, storage: Any, display_url: str) -> optuna.Study:
    """Create the spec's study, or load it to resume; refuse one made from another spec."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=spec.study, storage=storage,
        direction=StudyDirection[spec.objective.direction.upper()],
        sampler=make_sampler(spec), pruner=make_pruner(spec), load_if_exists=True)
    existing = len(study.get_trials(deepcopy=False))
    if existing:  # resumed: draw anew, not the first trials' configurations again
        study.sampler = make_sampler(spec, seed=resume_seed(spec.seed, existing))
    signature = study.user_attrs.get(keys.STUDY_SIGNATURE)
    if signature is None:
        study.set_user_attr(keys.STUDY_SPEC, spec.to_dict())
        study.set_user_attr(keys.STUDY_SIGNATURE, spec.space_signature())
        study.set_user_attr(keys.STUDY_VERSION, version("stabsweep"))
    elif signature != spec.space_signature():
        raise SweepError(
            f"study {spec.study!r} in {display_url} was created with a different search "
            "space, workload, steps or objective; resume it with its original spec, or give "
            "this one a new study name.", option="study")
    if study.direction.name.lower() != spec.objective.direction:
        raise SweepError(f"study {spec.study!r} exists with direction "
                         f"{study.direction.name.lower()}; give this spec a new study name.",
                         option="study")
    return study


def load_study(name: str, storage: str | None = None, workdir: Path | None = None
               ) -> optuna.Study:
    """The study ``name`` in ``storage`` (default: ``./stabsweep.db`` in ``workdir``), for
    reading (status, report, export). Raises :class:`StudyNotFound` naming what is there."""
    url = storage or default_storage_url(workdir or ".")
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise StudyNotFound(f"no study storage at {path}; run `stabsweep run SPEC` there "
                            "first, or give the storage URL.", option="storage")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=url)
    except KeyError:
        names = optuna.get_all_study_names(storage=url)
        raise StudyNotFound(f"no study {name!r} in {redact(url)}; studies there: "
                            f"{', '.join(names) or 'none'}.", option="storage") from None


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards ``n_trials`` (COMPLETE or PRUNED)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def retry(study: optuna.Study, number: int, params: dict[str, Any], attempt: int,
          max_retries: int) -> bool:
    """Queue trial ``number``'s params again (attempt + 1), unless its retries are used up."""
    if attempt > max_retries:
        return False
    study.enqueue_trial(dict(params), user_attrs={keys.ATTEMPT: attempt + 1,
                                                  keys.RETRY_OF: number},
                        skip_if_exists=False)
    return True


def recover_stale(study: optuna.Study, *, steps: int, max_retries: int, reason: str,
                  stale_ids: Iterable[int] | None = None,
                  on_recovered: Callable[[FrozenTrial], None] = lambda frozen: None) -> None:
    """Close trials left RUNNING (by a driver that died, or one interrupted mid-ask) as
    interrupted (FAIL) and retry their params.

    ``stale_ids`` None: every RUNNING trial is ours to close (SQLite: we hold the storage
    lock, so no other driver runs them). A database server: only the trials whose heartbeat
    is stale, and only the driver whose FAIL lands first retries one."""
    stale = None if stale_ids is None else set(stale_ids)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if stale is not None and frozen._trial_id not in stale:
            continue  # a live driver's (maybe ours)
        trial = Trial(study, frozen._trial_id)
        trial.set_user_attr(keys.OUTCOME, Outcome.INTERRUPTED)
        trial.set_user_attr(keys.REASON, reason)
        # The steps the driver last stored for it (or its last reported step): a lower bound,
        # and never the full budget.
        known = [int(frozen.user_attrs.get(keys.STEPS_RUN) or 0),
                 *(int(step) for step in frozen.intermediate_values)]
        try:
            trial.set_user_attr(keys.STEPS_RUN, min(max(known), steps))
            if not study._storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another driver closed it first, and retries it
        retry(study, frozen.number, frozen.params, int(frozen.user_attrs.get(keys.ATTEMPT, 1)),
              max_retries)
        on_recovered(frozen)
