"""What the two framework callbacks share besides the step itself.

The step is :class:`stability.watcher.StepWatcher` (the guard's own: measure, skip decision,
clip, record, detect, and on CUDA the CUDA-graph device step), which a callback runs between the
framework's backward and its ``optimizer.step()``; :meth:`StepWatcher.before_step` drops a
skipped update exactly (``found_inf`` on a fused optimizer, no gradients on any other). Here:
the values a framework logger gets, and how a callback knows an optimizer was built from the
config.
"""

from __future__ import annotations

from typing import Any

import torch

from stability.records import StepRecord, Verdict
from stability.watcher import StepWatcher

__all__ = ["StepWatcher", "built_here", "metrics_of", "tag_optimizer", "verdict_metrics"]


def metrics_of(record: StepRecord, skipped_total: int, *, layers: bool = True
               ) -> dict[str, float]:
    """The values a framework logger gets for one step (keys as the sweep's MLflow runs use:
    ``grad_norm/global``, ``grad_norm/<layer>``, then ``stability/*``)."""
    out = {"grad_norm/global": record.global_norm,
           "stability/skipped_steps": float(skipped_total),
           "stability/nonfinite_grads": float(record.nonfinite)}
    if layers:
        for name, value in zip(record.layer_names, record.layer_norms.tolist(), strict=True):
            out[f"grad_norm/{name}"] = float(value)
    return out


def verdict_metrics(verdict: Verdict) -> dict[str, float]:
    return {"stability/exploded": 1.0, "stability/verdict_step": float(verdict.step)}


def tag_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Mark an optimizer as built from the config (a callback then knows lr, optimizer and
    schedule are in force)."""
    optimizer._stabsweep_built = True  # type: ignore[attr-defined]
    return optimizer


def built_here(optimizer: Any) -> bool:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate / Lightning wrappers
    return bool(getattr(inner, "_stabsweep_built", False) or
                getattr(optimizer, "_stabsweep_built", False))
