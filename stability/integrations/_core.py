"""What the two framework callbacks share besides the step itself.

The step is :class:`stability.watcher.StepWatcher` (the guard's own: measure, skip decision,
clip, record, detect, and on CUDA the CUDA-graph device step), which a callback runs between the
framework's backward and its ``optimizer.step()``; :meth:`StepWatcher.before_step` drops a
skipped update exactly (``found_inf`` on a fused optimizer, no gradients on any other). Here:
the values a framework logger gets, and how a callback knows an optimizer was built from the
config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from stability.config import StabilityConfig
from stability.detectors import Detector
from stability.records import StepRecord, Verdict
from stability.watcher import StepWatcher

if TYPE_CHECKING:
    import pandas as pd
    from typing_extensions import Self

    from stability.diagnose import Diagnosis

__all__ = ["StepWatcher", "WatchingCallback", "built_here", "metrics_of", "tag_optimizer",
           "verdict_metrics"]


class WatchingCallback:
    """What both frameworks' ``StabilityCallback`` share: built from a config (or a mapping,
    or an exported YAML), the settings checked against what the framework can apply, and the
    results of the :class:`StepWatcher` once it watched a run.

    Args:
        config: the stability settings (or a mapping of them).
        out: folder for ``trace.parquet``, ``diagnosis.json`` and the plots; default: the
            framework's run folder.
        detector: explosion detector; None: the default composite for ``config.on_spike``.
        sync_every: host transfer cadence (default: every step on CPU, 10 on a GPU).
        apply_init: re-initialise the model's weights with ``config.init``.
        log_layers: also log one ``grad_norm/<layer>`` value per layer.
    """

    NOT_YET: ClassVar[str] = "has not watched a run yet"
    """the end of the error for results asked before a run (says how to start one)."""

    def __init__(self, config: StabilityConfig | Mapping[str, Any], *,
                 out: str | Path | None = None, detector: Detector | None = None,
                 sync_every: int | None = None, apply_init: bool = True,
                 log_layers: bool = True) -> None:
        self.config = (config if isinstance(config, StabilityConfig)
                       else StabilityConfig.from_dict(config))
        self.refuse(self.config)
        self.out = Path(out) if out is not None else None
        self._detector, self._sync_every = detector, sync_every
        self.apply_init, self.log_layers = apply_init, log_layers
        self.watcher: StepWatcher | None = None
        self.saved_to: Path | None = None

    @staticmethod
    def refuse(config: StabilityConfig) -> None:
        """Raise ConfigError for settings the framework cannot apply (each one says why)."""

    @classmethod
    def from_config(cls, config: StabilityConfig | Mapping[str, Any], **kwargs: Any) -> Self:
        return cls(config, **kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path, **kwargs: Any) -> Self:
        """A YAML file: a StabilityConfig or a file ``stabsweep export`` wrote."""
        return cls(StabilityConfig.load(path), **kwargs)

    # ------------------------------------------------------------------ results
    @property
    def verdict(self) -> Verdict | None:
        return self.watcher.verdict if self.watcher is not None else None

    def trace(self) -> pd.DataFrame:
        """The per-step DataFrame (the guard's columns)."""
        return self._watching().trace()

    def diagnosis(self) -> Diagnosis:
        return self._watching().diagnosis()

    def _watching(self) -> StepWatcher:
        if self.watcher is None:
            raise RuntimeError(f"StabilityCallback {self.NOT_YET}.")
        return self.watcher


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
