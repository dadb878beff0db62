"""stabsweep's sweep layer: spec, search space, trials on Ray, MLflow tracking, CLI.

Kept import-free on purpose: ``import sweeps`` must not pull in optuna, ray, mlflow or torch.
Import what you need from the submodules (``sweeps.spec``, ``sweeps.space``, ...).
"""

from __future__ import annotations

__all__: list[str] = []
