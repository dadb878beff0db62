"""``python -m sweeps.cli``: the ``stabsweep`` command (Ray Jobs run a detached sweep so)."""

from __future__ import annotations

from sweeps.cli import main

main()
