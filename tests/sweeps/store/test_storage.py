"""The driver's study storage: opening it while another process creates the same schema."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy.exc

from sweeps.store import StorageError, StudyStorage


def _racing(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """RDBStorage fails ``failures`` times as it does when a poller (``stabsweep status``, a
    test) creates the tables at the same moment, then opens."""
    calls: list[int] = []

    class Racing(optuna.storages.RDBStorage):
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(1)
            if len(calls) <= failures:
                raise sqlalchemy.exc.IntegrityError(
                    "INSERT INTO alembic_version", {},
                    Exception("UNIQUE constraint failed: alembic_version.version_num"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    return calls


def test_a_schema_created_concurrently_is_retried_not_fatal(tmp_path, monkeypatch) -> None:
    calls = _racing(monkeypatch, failures=1)
    storage = StudyStorage(f"sqlite:///{tmp_path / 'study.db'}")
    try:
        assert len(calls) == 2
        optuna.create_study(study_name="s", storage=storage.backend)
    finally:
        storage.close()


def test_an_error_that_persists_is_one_line(tmp_path, monkeypatch) -> None:
    _racing(monkeypatch, failures=99)
    with pytest.raises(StorageError, match=r"cannot open the study storage \(IntegrityError"):
        StudyStorage(f"sqlite:///{tmp_path / 'study.db'}")
