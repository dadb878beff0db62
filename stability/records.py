"""Host-side records shared by the guard, the detectors and the diagnosis."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(slots=True)
class StepRecord:
    """One optimizer step as the detectors see it (host values, pre-clip norms)."""

    step: int
    loss: float
    global_norm: float
    layer_norms: np.ndarray
    """[n_layers] pre-clip gradient norm per layer, in ``layer_names`` order."""
    layer_names: tuple[str, ...]
    lr: float = 0.0
    overflow: bool = False
    """fp16 only: GradScaler found inf/NaN and skipped this step (expected, not an explosion)."""
    nonfinite: int = 0
    """number of gradient tensors holding an inf or NaN."""
    skipped: bool = False
    """the update of this step was not applied (decided on device: a spike or non-finite)."""


@dataclass(slots=True, frozen=True)
class Verdict:
    """A detector's finding: this run is exploding."""

    kind: str
    """``nonfinite``, ``ceiling``, ``spike``, ``median_ratio``, ``growth``, ``loss_divergence``,
    ``overflow_streak`` or ``unsettled``."""
    step: int
    value: float
    threshold: float
    layer: str | None = None
    """first layer to cross (largest ratio to its own baseline), when the detector can tell."""
    detector: str = ""
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = f", first layer {self.layer}" if self.layer else ""
        return (f"{self.kind} at step {self.step}: value {self.value:.4g} "
                f"vs threshold {self.threshold:.4g}{where}")
