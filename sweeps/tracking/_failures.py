"""What a tracking store's failure means: unreachable or locked (retry, spool) or a refusal.

:class:`TrackingUnavailable` and :func:`is_transient` mark "could not reach the store" (worth
spooling and retrying); :func:`is_locked` marks SQLite's "database is locked" (retried with
backoff); :class:`Unresolved` an operation on a run created offline that the store does not
have yet. Any other error is a refusal: the sink counts it as rejected.
"""

from __future__ import annotations

import logging

__all__ = ["TrackingUnavailable", "Unresolved", "is_locked", "is_transient", "quiet_lock_noise"]

_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "INTERNAL_ERROR",
                    "DEADLINE_EXCEEDED", "SERVICE_UNDER_MAINTENANCE"}
_LOCK_MARKERS = ("database is locked", "database table is locked", "database is busy")


class TrackingUnavailable(Exception):
    """The store could not be reached (or stayed locked); the operation can be retried."""


class Unresolved(Exception):
    """The operation names a run created offline that the store does not have yet."""


def is_locked(exc: BaseException) -> bool:
    """True for SQLite's "database is locked" (several processes writing one file)."""
    text = str(exc).lower()
    return any(marker in text for marker in _LOCK_MARKERS)


def is_transient(exc: BaseException) -> bool:
    """True for "could not reach the store" errors: worth spooling and retrying."""
    if isinstance(exc, (TrackingUnavailable, ConnectionError, TimeoutError)):
        return True
    try:
        import requests

        if isinstance(exc, requests.exceptions.RequestException):
            return True
    except ImportError:  # pragma: no cover - mlflow depends on requests
        pass
    code = getattr(exc, "error_code", None)
    if code in _TRANSIENT_CODES:
        return True
    text = str(exc)
    return "API request to" in text and ("failed with exception" in text
                                         or "failed with timeout" in text)


class _LockNoiseFilter(logging.Filter):
    """MLflow logs every SQLAlchemy OperationalError with a traceback; a lock we retry is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        return not any(marker in text for marker in _LOCK_MARKERS)


_FILTER = _LockNoiseFilter()


def quiet_lock_noise() -> None:
    """Drop MLflow's log records of locks (the sink retries them) from its database logger."""
    logger = logging.getLogger("mlflow.store.db.utils")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
