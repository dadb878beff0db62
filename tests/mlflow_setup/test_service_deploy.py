"""The team deployment the READMEs describe: the compose file is valid where docker exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[2] / "mlflow_setup"


def _compose() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        try:
            if subprocess.run([docker, "compose", "version"], capture_output=True,
                              timeout=60).returncode == 0:
                return [docker, "compose"]
        except subprocess.TimeoutExpired:
            pass
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.skipif(_compose() is None, reason="docker compose is not installed here")
def test_compose_file_is_valid_with_the_example_env() -> None:
    compose = _compose()
    assert compose is not None
    done = subprocess.run([*compose, "--env-file", ".env.example", "-f", "docker-compose.yml",
                           "config", "-q"], cwd=SETUP, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_commands_exist() -> None:
    """The flags the team-deployment steps use are real options of the commands."""
    from typer.testing import CliRunner

    from mlflow_setup.__main__ import app as setup_app
    from sweeps.cli import app

    runner = CliRunner()
    start = runner.invoke(setup_app, ["start", "--help"], terminal_width=200).output
    for flag in ("--backend", "--host", "--port", "--allowed-hosts", "--workdir", "--detach"):
        assert flag in start
    run = runner.invoke(app, ["run", "--help"], terminal_width=200).output
    for flag in ("--ray-address", "--storage", "--tracking-uri", "--workers",
                 "--gpus-per-trial"):
        assert flag in run
    readme = (SETUP.parent / "README.md").read_text()
    assert "### A team deployment, step by step" in readme
    assert "python -m mlflow_setup start --backend" in readme
