"""The words every sub-package shares: how a trial ended (:class:`Outcome`), the names stabsweep
records in the Optuna storage (:mod:`keys`) and why a sweep cannot start or go on (errors).

The bottom of ``sweeps``: it imports no other sub-package and nothing heavy.
"""

from __future__ import annotations

from sweeps.common import keys
from sweeps.common._lazy import lazy_exports
from sweeps.common.errors import OptionError, SweepError, SweepInterrupted
from sweeps.common.outcomes import Look, Outcome

__all__ = ["Look", "OptionError", "Outcome", "SweepError", "SweepInterrupted", "keys",
           "lazy_exports"]
