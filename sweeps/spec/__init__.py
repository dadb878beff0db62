"""The spec language: a sweep's YAML file, its search space and sampler, checked before anything
runs. Every problem is a :class:`SpecError` that names the field and the fix.

Bottom to top: ``_values`` (SpecError, value helpers) <- ``_params`` (parameter types) <-
``_suggest`` (a trial's values, a grid) <- ``space`` (the ``space:`` section) <- ``samplers`` <-
``_checks`` (against StabilityConfig and the workload) <- ``sweep_spec`` (SweepSpec).
"""

from __future__ import annotations

from sweeps.spec._params import CategoricalParam, Condition, FloatParam, IntParam, Param, is_active
from sweeps.spec._suggest import (
    MAX_GRID_POINTS,
    WORKLOAD_PREFIX,
    config_from_params,
    grid_points,
    grid_size,
    suggest,
)
from sweeps.spec._values import ObjectiveSpec, SpecError, WorkloadSpec
from sweeps.spec.samplers import (
    PRUNER_OPTIONS,
    SAMPLER_OPTIONS,
    make_pruner,
    make_sampler,
    resume_seed,
)
from sweeps.spec.space import parse_space
from sweeps.spec.sweep_spec import SweepSpec, builtin_workloads, load_spec, parse_spec

__all__ = [
    "MAX_GRID_POINTS",
    "PRUNER_OPTIONS",
    "SAMPLER_OPTIONS",
    "WORKLOAD_PREFIX",
    "CategoricalParam",
    "Condition",
    "FloatParam",
    "IntParam",
    "ObjectiveSpec",
    "Param",
    "SpecError",
    "SweepSpec",
    "WorkloadSpec",
    "builtin_workloads",
    "config_from_params",
    "grid_points",
    "grid_size",
    "is_active",
    "load_spec",
    "make_pruner",
    "make_sampler",
    "parse_space",
    "parse_spec",
    "resume_seed",
    "suggest",
]
