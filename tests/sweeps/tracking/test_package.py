"""The sweeps.tracking package: importing it (and sweeps.worker.objective) loads neither mlflow nor
torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_imports_stay_light() -> None:
    code = ("import sys, sweeps.worker.objective, sweeps.tracking; "
            "print('mlflow' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["False", "False"]
