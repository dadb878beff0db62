"""Fixtures of the sweeps.tracking tests: trials upload inline, and a study on a fresh
copy of an empty MLflow SQLite store."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweeps.tracking import StudyTracker
from tests.sweeps.tracking.helpers import SPEC, client_for, sqlite_uri


@pytest.fixture(autouse=True)
def inline_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials upload in-process when they finish (deterministic); the uploader process has
    its own test."""
    monkeypatch.setenv("STABSWEEP_TRACKING_UPLOAD", "inline")


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty MLflow SQLite file (creating the tables takes seconds)."""
    folder = tmp_path_factory.mktemp("store")
    client_for(sqlite_uri(folder)).search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path
          ) -> Iterator[StudyTracker]:
    monkeypatch.chdir(tmp_path)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    yield StudyTracker.open("tiny", SPEC, sqlite_uri(tmp_path), spool_dir=tmp_path / "spool")

