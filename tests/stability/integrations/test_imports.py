"""``stability`` imports no training framework until an integration module is imported."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import stability, stability.guard, stability.trainer, stability.integrations
import stability.integrations._core
loaded = sorted(m for m in ("pytorch_lightning", "lightning", "transformers", "accelerate")
                if m in sys.modules)
assert not loaded, loaded
import stability.integrations.transformers
assert "transformers" in sys.modules and "pytorch_lightning" not in sys.modules
"""


def test_the_frameworks_load_only_with_their_integration() -> None:
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
