"""The record tables of batch file processing: jobs, per-file results, the dead-letter queue.

These outlive Prefect's run retention: they are what operators query to learn what happened
to a file, and what a later run consults to skip input it has already processed. Lists and
option maps are stored as JSON text, and timestamps as UTC-aware datetimes, so SQLite and
PostgreSQL return exactly the same values.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from sqlalchemy import DateTime, Text, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

JOB_MODES = ("sequential", "parallel", "queue")
# `interrupted`: the batch lost its records database and stopped; the counters are what was
# committed before. A `running` job whose process is gone is shown as `killed` (liveness.py).
JOB_STATUSES = ("running", "completed", "failed", "crashed", "interrupted")
RESULT_STATUSES = ("completed", "skipped", "failed", "dead_lettered")
JOB_COUNTERS = ("total", "processed", "skipped", "retried", "fallback", "dead_lettered")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid4().hex


def to_json(value: Any) -> str:
    """JSON text for a list/dict column; text that is already a string is kept as given."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both backends.

    PostgreSQL keeps `timestamptz`; SQLite has no time zones, so values are stored as naive UTC
    (which also keeps them ordered as text) and given back their UTC zone when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class BatchJob(SQLModel, table=True):
    """One run of batch file processing over a set of inputs."""

    __tablename__ = "processing_jobs"

    id: str = Field(default_factory=new_id, primary_key=True)
    name: str = "files"
    processor: str
    fallbacks: str = Field(default="[]", sa_type=Text)
    inputs: str = Field(default="[]", sa_type=Text)
    output_dir: str | None = None
    mode: str = "sequential"
    status: str = Field(default="running", index=True)
    flow_run_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    total: int = 0
    processed: int = 0
    skipped: int = 0
    retried: int = 0
    fallback: int = 0
    dead_lettered: int = 0
    duration: float | None = None
    options: str = Field(default="{}", sa_type=Text)
    error: str | None = Field(default=None, sa_type=Text)  # why an interrupted job stopped
    host: str | None = None  # of the process running the job, to tell a killed one
    pid: int | None = None

    def fallback_list(self) -> list[str]:
        return json.loads(self.fallbacks)

    def input_list(self) -> list[str]:
        return json.loads(self.inputs)

    def option_dict(self) -> dict[str, Any]:
        return json.loads(self.options)


class FileResult(SQLModel, table=True):
    """What happened to one input file in one job; one row per (job, file), whatever re-runs."""

    __tablename__ = "job_results"
    __table_args__ = (UniqueConstraint("job_id", "input_path", name="uq_job_results_job_input"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="processing_jobs.id", index=True)
    input_path: str = Field(sa_type=Text)
    fingerprint: str = Field(index=True)
    status: str
    processor: str | None = None
    attempts: int = 0
    output_path: str | None = Field(default=None, sa_type=Text)
    error: str | None = Field(default=None, sa_type=Text)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    completed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    duration: float = 0.0


class DeadLetter(SQLModel, table=True):
    """An input file that failed every processor and retry; one live item per file."""

    __tablename__ = "dead_letter_queue"
    __table_args__ = (UniqueConstraint("input_path", name="uq_dead_letter_queue_input"),)

    id: int | None = Field(default=None, primary_key=True)
    input_path: str = Field(sa_type=Text)
    fingerprint: str
    job_id: str
    error: str = Field(sa_type=Text)
    attempts: int = 0
    processors: str = Field(default="[]", sa_type=Text)
    retry_count: int = 0
    first_failed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_failed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    output_dir: str | None = Field(default=None, sa_type=Text)
    options: str = Field(default="{}", sa_type=Text)

    def processor_list(self) -> list[str]:
        return json.loads(self.processors)

    def option_dict(self) -> dict[str, Any]:
        return json.loads(self.options)
