"""Callbacks for training frameworks: the guard's step inside their own loops.

``stability.integrations.lightning.StabilityCallback`` (PyTorch Lightning, extra
``stabsweep[lightning]``) and ``stability.integrations.transformers.StabilityCallback``
(Hugging Face ``Trainer``, extra ``stabsweep[transformers]``). Importing this package imports
neither framework; each module imports its own.
"""

from __future__ import annotations
