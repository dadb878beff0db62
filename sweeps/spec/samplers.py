"""The sweep's sampler and pruner: their spec sections, checks and the Optuna objects.

``sampler: {name: tpe, ...}`` and ``pruner: {name: median, ...}`` are parsed against the
option tables below, checked against the parsed space, and built by :func:`make_sampler` and
:func:`make_pruner`. Explosion pruning is not here: it is the detectors', always on.
"""

from __future__ import annotations

import importlib.util
import random
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sweeps.spec._params import CategoricalParam
from sweeps.spec._suggest import check_grid_size, grid_points
from sweeps.spec._values import NamedSpec, SpecError, as_bool, as_int, as_number, did_you_mean

if TYPE_CHECKING:
    import optuna

    from sweeps.spec.sweep_spec import SweepSpec

__all__ = ["PRUNER_OPTIONS", "SAMPLER_OPTIONS", "check_pruner", "check_sampler", "make_pruner",
           "make_sampler", "parse_named", "resume_seed"]

# Option name -> (kind, exclusive lower bound or inclusive minimum); kind: int, float or bool.
SAMPLER_OPTIONS: dict[str, dict[str, tuple[str, float | None]]] = {
    "tpe": {"n_startup_trials": ("int", 0), "n_ei_candidates": ("int", 1),
            "multivariate": ("bool", None), "group": ("bool", None),
            "constant_liar": ("bool", None)},
    "random": {},
    "grid": {},
    "cmaes": {"n_startup_trials": ("int", 0), "sigma0": ("float", 0.0), "popsize": ("int", 1),
              "use_separable_cma": ("bool", None), "with_margin": ("bool", None),
              "lr_adapt": ("bool", None), "consider_pruned_trials": ("bool", None)},
}
PRUNER_OPTIONS: dict[str, dict[str, tuple[str, float | None]]] = {
    "none": {},
    "median": {"n_startup_trials": ("int", 0), "n_warmup_steps": ("int", 0),
               "interval_steps": ("int", 1), "n_min_trials": ("int", 1)},
    "percentile": {"percentile": ("float", 0.0), "n_startup_trials": ("int", 0),
                   "n_warmup_steps": ("int", 0), "interval_steps": ("int", 1),
                   "n_min_trials": ("int", 1)},
    "hyperband": {"min_resource": ("int", 1), "max_resource": ("int", 1),
                  "reduction_factor": ("int", 2), "bootstrap_count": ("int", 0)},
    "successive_halving": {"min_resource": ("int", 1), "reduction_factor": ("int", 2),
                           "min_early_stopping_rate": ("int", 0),
                           "bootstrap_count": ("int", 0)},
}


def parse_named(key: str, raw: Any, table: Mapping[str, Mapping[str, tuple[str, Any]]],
                 default: str) -> NamedSpec:
    if raw is None:
        raw = {"name": default}
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        raise SpecError(key, f"must be a mapping {{name: {default}, <option>: value}} or a name; "
                        f"got {raw!r}")
    name = raw.get("name", default)
    if name not in table:
        raise SpecError(f"{key}.name", f"unknown {key} {name!r}; use {', '.join(table)}")
    options: dict[str, Any] = {}
    for option, value in raw.items():
        if option == "name":
            continue
        path = f"{key}.{option}"
        if option not in table[name]:
            valid = ", ".join(table[name]) or "(none)"
            raise SpecError(path, f"not an option of the {name} {key}; valid: {valid}"
                            f"{did_you_mean(str(option), table[name])}")
        kind, low = table[name][option]
        if kind == "bool":
            options[option] = as_bool(path, value)
        elif kind == "int":
            options[option] = as_int(path, value, minimum=low)
        else:
            options[option] = float(as_number(path, value))
            if options[option] <= low:
                raise SpecError(path, f"must be > {low}; got {value!r}")
    return NamedSpec(name=name, options=options)


def check_sampler(spec: SweepSpec) -> None:
    name, options = spec.sampler.name, spec.sampler.options
    if name == "tpe" and options.get("group") and options.get("multivariate") is False:
        raise SpecError("sampler.group", "needs multivariate: true; set multivariate: true or "
                        "drop group")
    if name == "cmaes":
        cats = [n for n, p in spec.space.items() if isinstance(p, CategoricalParam)]
        if cats:
            raise SpecError("sampler.name", f"cmaes cannot handle categorical params (space."
                            f"{', space.'.join(cats)}); use tpe, or fix the categorical params")
        if importlib.util.find_spec("cmaes") is None:
            raise SpecError("sampler.name", "cmaes needs the cmaes package; pip install cmaes, "
                            "or use tpe")
    if name == "grid":
        n_points = check_grid_size(spec.space)  # counted: a huge grid is never built
        if spec.n_trials > n_points:
            raise SpecError("n_trials", f"the grid has {n_points} points, so n_trials "
                            f"({spec.n_trials}) would repeat them; set n_trials <= {n_points}")


def check_pruner(spec: SweepSpec) -> None:
    name, options = spec.pruner.name, spec.pruner.options
    if name == "percentile":
        percentile = options.get("percentile")
        if percentile is None or not 0 < percentile < 100:
            raise SpecError("pruner.percentile", "the percentile pruner needs percentile in "
                            f"(0, 100), e.g. 25.0; got {percentile!r}")
    if name in ("median", "percentile") and options.get("n_warmup_steps", 0) >= spec.steps:
        raise SpecError("pruner.n_warmup_steps", f"must be < steps ({spec.steps}) or the pruner "
                        f"never acts; got {options['n_warmup_steps']}")
    if name == "successive_halving" and options.get("min_resource",
                                                    spec.report_every) >= spec.steps:
        raise SpecError("pruner.min_resource", f"must be < steps ({spec.steps}) or the pruner "
                        f"never acts; got {options.get('min_resource', spec.report_every)} "
                        "(it defaults to report_every)")
    if name == "hyperband":
        low = options.get("min_resource", spec.report_every)
        high = options.get("max_resource", spec.steps)
        if high > spec.steps:
            raise SpecError("pruner.max_resource", f"must be <= steps ({spec.steps}); got {high}")
        if low >= high:
            raise SpecError("pruner.min_resource", f"must be < max_resource ({high}); got {low} "
                            "(min_resource defaults to report_every, max_resource to steps)")


def resume_seed(seed: int, trials: int) -> int:
    """The sampler's seed for a study that already holds ``trials`` trials: ``seed`` for a new
    study, else a seed drawn from both. A sampler seeded with ``seed`` again on resume would
    replay its random draws from the start and propose the first trials' configurations once
    more; the count of trials changes whenever a driver has proposed anything, so each resume
    draws anew, and the same resume of the same study draws the same."""
    if trials <= 0:
        return seed
    return random.Random(f"stabsweep-resume:{seed}:{trials}").getrandbits(32)


def make_sampler(spec: SweepSpec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The spec's sampler, its random draws seeded with ``seed`` (default ``spec.seed``; see
    :func:`resume_seed`). A grid's order always follows ``spec.seed``."""
    import optuna

    seed = spec.seed if seed is None else seed
    opts = dict(spec.sampler.options)
    name = spec.sampler.name
    conditional = any(p.when for p in spec.space.values())
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return _grid_sampler(spec, conditional, seed)
    if name == "cmaes":
        # Explosions are PRUNED with a bad last value: CMA-ES must see them to move away.
        opts.setdefault("consider_pruned_trials", True)
        return optuna.samplers.CmaEsSampler(seed=seed, **opts)
    # TPE: multivariate models interactions (lr x clip threshold); group=True splits the
    # space by which conditional params a trial used, so conditional params join the model.
    opts.setdefault("multivariate", True)
    opts.setdefault("group", conditional and opts["multivariate"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, **opts)


def _grid_sampler(spec: SweepSpec, conditional: bool, seed: int
                  ) -> optuna.samplers.BaseSampler:
    import optuna

    class _AskTellGridSampler(optuna.samplers.GridSampler):
        """GridSampler for the ask/tell driver. Optuna's ``after_trial`` calls ``study.stop()``
        once the grid is used up, which raises RuntimeError outside ``optimize()``: the
        driver's last ``tell`` would crash the sweep. The driver stops at ``n_trials``."""

        def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        state: optuna.trial.TrialState, values: Any) -> None:
            return None

    grid = {name: param.grid_values() or [] for name, param in spec.space.items()}
    sampler = _AskTellGridSampler(grid, seed=seed)  # which unvisited point comes next
    if not conditional:
        return sampler
    # GridSampler walks the full Cartesian product, where an inactive conditional param would
    # repeat the same configuration once per value. Give it the distinct points instead; an
    # inactive param's slot holds its first value, which is never suggested.
    if not hasattr(sampler, "_all_grids") or not hasattr(sampler, "_param_names"):
        raise RuntimeError("this Optuna's GridSampler has no _all_grids; conditional grids "
                           "need Optuna 4.x-5.x, or use sampler tpe")
    names: list[str] = sampler._param_names
    points = [tuple(p.get(n, grid[n][0]) for n in names) for p in grid_points(spec.space)]
    random.Random(spec.seed).shuffle(points)  # a point's grid id: the same on every resume
    sampler._all_grids = points
    sampler._n_min_trials = len(points)
    return sampler


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    """Optuna's pruner from the spec. Explosion pruning is separate and always on.

    Steps are training steps (reports arrive every ``report_every`` steps); Hyperband's
    resources default to ``report_every`` .. ``steps``.
    """
    import optuna

    opts = dict(spec.pruner.options)
    name = spec.pruner.name
    if name == "median":
        return optuna.pruners.MedianPruner(**opts)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(**opts)
    if name == "hyperband":
        opts.setdefault("min_resource", spec.report_every)
        opts.setdefault("max_resource", spec.steps)
        return optuna.pruners.HyperbandPruner(**opts)
    if name == "successive_halving":
        # min_resource "auto" would wait for a completed trial: start at the first report
        opts.setdefault("min_resource", spec.report_every)
        return optuna.pruners.SuccessiveHalvingPruner(**opts)
    return optuna.pruners.NopPruner()
