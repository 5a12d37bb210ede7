"""Which failures of a maintenance task are worth retrying, and how long to wait.

Retried: a server that could not be reached (restarting, fail-over), a serialization failure
or deadlock, a lock that was not granted in time. Not retried: SQL errors, missing
prerequisites, bad configuration, permission problems: a retry cannot change those.
"""

from __future__ import annotations

from typing import Any

from flows.backoff import backoff_delays
from flows.errors import ConnectionFailure

# serialization_failure, deadlock_detected, lock_not_available, query_canceled (lock timeout)
TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03"}
RETRIES = 2


def is_transient(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    if isinstance(exc, ConnectionFailure):
        return True
    return getattr(exc, "sqlstate", None) in TRANSIENT_SQLSTATES


def retry_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only transient failures."""
    failure = state.result(raise_on_failure=False)
    return isinstance(failure, BaseException) and is_transient(failure)


def transient_retries(first_delay: float = 1.0) -> dict[str, Any]:
    """Task options: two retries of transient failures, exponential with jitter."""
    return {
        "retries": RETRIES,
        "retry_delay_seconds": backoff_delays(RETRIES + 1, first_delay, jitter=0.25, max_delay=30),
        "retry_condition_fn": retry_transient,
    }
