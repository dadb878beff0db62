"""stabsweep's stability core: measure, detect, clip and diagnose exploding gradients.

Pure PyTorch: usable inside any training loop without Optuna, Ray or MLflow.

    from stability import StabilityGuard
    guard = StabilityGuard.from_yaml("best.yaml", model)
"""

from __future__ import annotations

from typing import Any

from stability.config import ConfigError, StabilityConfig
from stability.records import StepRecord, Verdict

__all__ = [
    "ConfigError",
    "StabilityConfig",
    "StabilityGuard",
    "StepRecord",
    "Verdict",
    "diagnose",
    "load_workload",
    "train",
]

_LAZY = {
    "StabilityGuard": ("stability.guard", "StabilityGuard"),
    "train": ("stability.trainer", "train"),
    "diagnose": ("stability.diagnose", "diagnose"),
    "load_workload": ("stability.workloads", "load_workload"),
}


def __getattr__(name: str) -> Any:
    # Lazy so that `import stability.config` stays light and free of import cycles.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'stability' has no attribute {name!r}")
