"""What each sub-package of sweeps/ exports resolves, the user's names come from ``sweeps``
itself, and importing the packages the CLI starts with loads none of the heavy libraries."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUB_PACKAGES = sorted(p.name for p in (REPO / "sweeps").iterdir() if (p / "__init__.py").is_file())


@pytest.mark.parametrize("package", ["sweeps", *(f"sweeps.{p}" for p in SUB_PACKAGES)])
def test_every_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ lists names it cannot give: {missing}"


def test_an_unknown_name_is_an_attribute_error() -> None:
    import sweeps
    import sweeps.driver

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = sweeps.driver.nope  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        from sweeps import runner  # noqa: F401  (moved to sweeps.driver.runner)


def test_the_user_names_come_from_sweeps() -> None:
    import sweeps.driver.options
    import sweeps.driver.runner
    import sweeps.spec.sweep_spec
    from sweeps import RunOptions, SweepSpec, run_sweep

    assert RunOptions is sweeps.driver.options.RunOptions
    assert SweepSpec is sweeps.spec.sweep_spec.SweepSpec
    assert run_sweep is sweeps.driver.runner.run_sweep


def test_importing_the_front_packages_stays_light() -> None:
    code = ("import sys, sweeps, sweeps.cli, sweeps.common, sweeps.driver, sweeps.worker; "
            "from sweeps.driver import RunOptions; "
            "print(sorted(m for m in ('optuna', 'ray', 'mlflow', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
