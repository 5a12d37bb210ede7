"""The record queries batch file processing needs: jobs, per-file results, dead letters.

Every function takes the caller's `Session` and flushes but never commits: the caller's
`flows.records.db.session()` block is the transaction, so a batch of results lands whole or
not at all. Upserts use each backend's own `INSERT ... ON CONFLICT`, so two runs racing on
the same row can never duplicate it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import pydantic
from sqlalchemy import delete, func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from flows.errors import ValidationError
from flows.records.models import (
    JOB_COUNTERS,
    JOB_MODES,
    JOB_STATUSES,
    RESULT_STATUSES,
    BatchJob,
    DeadLetter,
    FileResult,
    to_json,
    utcnow,
)

#: Most values bound in one IN (...) or one multi-row statement; far below SQLite's and
#: PostgreSQL's parameter limits.
CHUNK = 500
#: Shortest job id prefix `get_job` accepts, like an abbreviated git hash.
MIN_PREFIX = 6

_JSON_FIELDS = ("fallbacks", "inputs", "options")
_RESULT_FIELDS = frozenset(FileResult.model_fields) - {"id"}
# Result fields where None means "use the default" (now, 0) rather than an invalid row.
_DEFAULTED = frozenset({"started_at", "completed_at", "attempts", "duration"})
_HEX = re.compile(r"[0-9a-f]+")


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValidationError(f"unknown {what} {value!r} — use one of: {', '.join(allowed)}")


def _insert(session: Session, model: type) -> Any:
    """The dialect's own INSERT, the one that has `on_conflict_do_update`."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise ValidationError(f"records upsert is not supported on {dialect!r} — use sqlite or postgresql")


# --- jobs -------------------------------------------------------------------------------------


def start_job(session: Session, **fields: Any) -> BatchJob:
    """Record a new running job; list/dict values for fallbacks, inputs, options become JSON."""
    for name in _JSON_FIELDS:
        if name in fields:
            fields[name] = to_json(fields[name])
    unknown = set(fields) - set(BatchJob.model_fields)
    if unknown:
        raise ValidationError(f"unknown job field(s) {', '.join(sorted(unknown))}")
    job = BatchJob(**fields)
    _check(job.mode, JOB_MODES, "job mode")
    _check(job.status, JOB_STATUSES, "job status")
    session.add(job)
    session.flush()
    return job


def finish_job(
    session: Session, job_id: str, status: str, counters: Mapping[str, int], duration: float | None
) -> BatchJob:
    """Close a job: its final status, counters (total, processed, ...), duration and end time."""
    _check(status, JOB_STATUSES, "job status")
    unknown = set(counters) - set(JOB_COUNTERS)
    if unknown:
        raise ValidationError(f"unknown job counter(s) {', '.join(sorted(unknown))}")
    job = session.get(BatchJob, job_id)
    if job is None:
        raise ValidationError(f"no job {job_id!r} to finish")
    for name, value in counters.items():
        setattr(job, name, int(value))
    job.status, job.duration, job.completed_at = status, duration, utcnow()
    session.add(job)
    session.flush()
    return job


def mark_interrupted(
    session: Session, job_id: str, error: str, counters: Mapping[str, int] | None = None
) -> BatchJob | None:
    """Close a job that stopped because its records database was lost: `interrupted`, with
    the counters of what was committed (recounted from its results), the error and end time.

    A job that is not `running` any more is left alone; None when there is no such job.
    """
    job = session.get(BatchJob, job_id)
    if job is None or job.status != "running":
        return job
    query = (
        select(FileResult.status, func.count())
        .where(FileResult.job_id == job_id)
        .group_by(col(FileResult.status))
    )
    committed = {status: int(count) for status, count in session.execute(query)}
    job.processed = committed.get("completed", 0)
    job.skipped = committed.get("skipped", 0)
    job.dead_lettered = committed.get("dead_lettered", 0)
    for name in ("retried", "fallback"):
        if counters and name in counters:
            setattr(job, name, int(counters[name]))
    now = utcnow()
    job.status, job.error, job.completed_at = "interrupted", error, now
    job.duration = round((now - job.started_at).total_seconds(), 3)
    session.add(job)
    session.flush()
    return job


def list_jobs(session: Session, limit: int = 20) -> list[BatchJob]:
    """The newest jobs first."""
    query = select(BatchJob).order_by(col(BatchJob.created_at).desc(), col(BatchJob.id).desc()).limit(limit)
    return list(session.exec(query))


def get_job(session: Session, job_id: str) -> BatchJob | None:
    """The job with this id, or with this unique id prefix of at least 6 characters.

    None when nothing matches; `ValidationError` for a prefix that is too short or matches
    several jobs, because guessing which one the operator meant would be worse than asking.
    """
    ref = job_id.strip().lower()
    job = session.get(BatchJob, ref)
    if job is not None or not _HEX.fullmatch(ref):
        return job
    if len(ref) < MIN_PREFIX:
        raise ValidationError(f"job id prefix {ref!r} is too short — give at least {MIN_PREFIX} characters")
    matches = list(session.exec(select(BatchJob).where(col(BatchJob.id).startswith(ref)).limit(2)))
    if len(matches) > 1:
        raise ValidationError(f"job id prefix {ref!r} matches several jobs — give more characters")
    return matches[0] if matches else None


def mark_crashed(session: Session, older_than: timedelta) -> list[str]:
    """Mark jobs still `running` that started longer ago than `older_than` as `crashed`.

    A run killed by SIGKILL or a lost machine never finishes its job record; this is how the
    next run tells such jobs from ones still in progress. Returns the ids it marked.
    """
    crashed = (
        update(BatchJob)
        .where(col(BatchJob.status) == "running", col(BatchJob.started_at) < utcnow() - older_than)
        .values(status="crashed")
        .returning(BatchJob.id)
    )
    return sorted(session.execute(crashed).scalars())


# --- per-file results -------------------------------------------------------------------------


def completed_fingerprints(session: Session, fingerprints: Iterable[str]) -> set[str]:
    """Those of `fingerprints` with a completed (or skipped) result in any job: input to skip."""
    wanted = sorted(set(fingerprints))
    found: set[str] = set()
    for chunk in _chunks(wanted):
        query = (
            select(FileResult.fingerprint)
            .where(
                col(FileResult.fingerprint).in_(chunk), col(FileResult.status).in_(("completed", "skipped"))
            )
            .distinct()
        )
        found.update(session.exec(query))
    return found


def record_results(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert FileResult rows; a row whose (job_id, input_path) exists replaces that row's values.

    Rows are validated through the model first, so defaults apply (also for a None timestamp,
    attempts or duration) and every row binds the same columns. Returns the number of rows written.
    """
    # Keyed by (job_id, input_path): one statement may not touch a row twice, the last one wins.
    values: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        unknown = set(row) - _RESULT_FIELDS
        if unknown:
            raise ValidationError(f"unknown result field(s) {', '.join(sorted(unknown))}")
        try:
            result = FileResult.model_validate(
                {k: v for k, v in row.items() if v is not None or k not in _DEFAULTED}
            )
        except pydantic.ValidationError as exc:
            raise ValidationError(f"invalid result row for {row.get('input_path')!r}: {exc}") from None
        _check(result.status, RESULT_STATUSES, "result status")
        values[(result.job_id, result.input_path)] = result.model_dump(exclude={"id"})
    for chunk in _chunks(list(values.values())):
        session.execute(_result_upsert(session.get_bind().dialect.name), list(chunk))
    session.flush()
    return len(values)


@functools.lru_cache(maxsize=4)
def _result_upsert(dialect: str) -> Any:
    """One upsert statement per backend, built once: results are written a file at a time."""
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(FileResult)
    updated = {name: stmt.excluded[name] for name in sorted(_RESULT_FIELDS - {"job_id", "input_path"})}
    return stmt.on_conflict_do_update(index_elements=["job_id", "input_path"], set_=updated)


def job_results(session: Session, job_id: str, status: str | None = None) -> list[FileResult]:
    """A job's results in the order they were first recorded, optionally of one status."""
    query = select(FileResult).where(FileResult.job_id == job_id)
    if status is not None:
        _check(status, RESULT_STATUSES, "result status")
        query = query.where(FileResult.status == status)
    return list(session.exec(query.order_by(col(FileResult.id))))


# --- dead-letter queue ------------------------------------------------------------------------


def dead_letter(
    session: Session,
    *,
    input_path: str,
    fingerprint: str,
    job_id: str,
    error: str,
    attempts: int,
    processors: Sequence[str] | str,
    output_dir: str | None = None,
    options: Mapping[str, Any] | str | None = None,
) -> DeadLetter:
    """Put a file in the dead-letter queue, or refresh its item when it is already there.

    A repeated failure updates what is known of the latest one and keeps `first_failed_at` and
    `retry_count`, so the queue shows how long a file has been failing and how often.
    """
    now = utcnow()
    latest = {
        "fingerprint": fingerprint,
        "job_id": job_id,
        "error": error,
        "attempts": attempts,
        "processors": to_json(processors),
        "last_failed_at": now,
        "output_dir": output_dir,
        "options": to_json(options or {}),
    }
    stmt = _insert(session, DeadLetter).values(
        input_path=input_path, first_failed_at=now, retry_count=0, **latest
    )
    session.execute(stmt.on_conflict_do_update(index_elements=["input_path"], set_=latest))
    query = select(DeadLetter).where(DeadLetter.input_path == input_path)
    return session.exec(query.execution_options(populate_existing=True)).one()


def list_dead_letters(session: Session, limit: int = 100) -> list[DeadLetter]:
    """Dead-letter items, the longest-failing first."""
    query = select(DeadLetter).order_by(col(DeadLetter.first_failed_at), col(DeadLetter.id)).limit(limit)
    return list(session.exec(query))


def get_dead_letter(session: Session, id: int) -> DeadLetter | None:
    return session.get(DeadLetter, id)


def resolve_dead_letter(session: Session, id: int) -> bool:
    """Remove an item once its file has been processed; False when there was no such item."""
    deleted = session.execute(delete(DeadLetter).where(col(DeadLetter.id) == id))
    session.flush()
    return bool(deleted.rowcount)


def dead_letter_failed_again(
    session: Session, id: int, error: str, attempts: int, processors: Sequence[str] | str
) -> DeadLetter | None:
    """Count a failed reprocessing of a dead-letter item; None when the item is gone."""
    # retry_count + 1 in SQL, so two reprocessors failing at once both count.
    session.execute(
        update(DeadLetter)
        .where(col(DeadLetter.id) == id)
        .values(
            retry_count=DeadLetter.retry_count + 1,
            last_failed_at=utcnow(),
            error=error,
            attempts=attempts,
            processors=to_json(processors),
        )
        .execution_options(synchronize_session=False)
    )
    query = select(DeadLetter).where(col(DeadLetter.id) == id).execution_options(populate_existing=True)
    return session.exec(query).one_or_none()
