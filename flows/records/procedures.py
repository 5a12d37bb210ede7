"""Seed 003's state tables for procedures: `script_execution_log` and `health_check_results`.

Every maintenance or health procedure run leaves one `script_execution_log` row (written when
it starts, completed when it ends, so a killed run is visible as never finished); every health
check run leaves one `health_check_results` row per check. Parameters are stored with secrets
already removed (`flows.maintenance.record.safe_parameters`).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Text
from sqlmodel import Field, Session, SQLModel, col, select

from flows.records.models import UTCDateTime, to_json, utcnow


class ScriptExecution(SQLModel, table=True):
    """One run of one procedure (`db migrate`, `backup create`, `health`, ...)."""

    __tablename__ = "script_execution_log"

    id: int | None = Field(default=None, primary_key=True)
    script_name: str = Field(index=True)
    environment: str = "development"
    parameters: str = Field(default="{}", sa_type=Text)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    duration: float | None = None
    exit_code: int | None = None
    status: str = "running"  # running | succeeded | failed | dry_run
    message: str | None = Field(default=None, sa_type=Text)
    rows_affected: int | None = None
    bytes_affected: int | None = None
    flow_run_id: str | None = None

    def parameter_dict(self) -> dict[str, Any]:
        return json.loads(self.parameters)


class HealthCheckResult(SQLModel, table=True):
    """One check of one health run: up, degraded or down, how long it took, why."""

    __tablename__ = "health_check_results"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    check_name: str = Field(index=True)
    status: str  # up | degraded | down
    required: bool = False
    response_time_ms: float | None = None
    details: str = Field(default="{}", sa_type=Text)
    overall_status: str  # healthy | degraded | unhealthy
    checked_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)

    def detail_dict(self) -> dict[str, Any]:
        return json.loads(self.details)


def start_execution(
    session: Session, name: str, parameters: dict[str, Any], environment: str, flow_run_id: str | None
) -> ScriptExecution:
    row = ScriptExecution(
        script_name=name,
        environment=environment,
        parameters=to_json(parameters),
        flow_run_id=flow_run_id,
    )
    session.add(row)
    session.flush()
    return row


def finish_execution(
    session: Session,
    execution_id: int,
    *,
    exit_code: int,
    message: str | None,
    rows: int | None = None,
    bytes_: int | None = None,
) -> None:
    row = session.get(ScriptExecution, execution_id)
    if row is None:
        return
    row.ended_at = utcnow()
    row.duration = (row.ended_at - row.started_at).total_seconds()
    row.exit_code = exit_code
    row.status = "succeeded" if exit_code == 0 else "dry_run" if exit_code == 10 else "failed"
    row.message = message
    row.rows_affected = rows
    row.bytes_affected = bytes_
    session.add(row)


def list_executions(session: Session, name: str | None = None, limit: int = 20) -> list[ScriptExecution]:
    query = select(ScriptExecution).order_by(col(ScriptExecution.id).desc()).limit(limit)
    if name:
        query = query.where(ScriptExecution.script_name == name)
    return list(session.exec(query))


def latest_per_script(session: Session) -> list[ScriptExecution]:
    """The newest finished run of every procedure (for the Prometheus metrics)."""
    newest: dict[str, ScriptExecution] = {}
    query = (
        select(ScriptExecution)
        .where(col(ScriptExecution.ended_at).is_not(None))
        .order_by(col(ScriptExecution.id).desc())
        .limit(5000)
    )
    for row in session.exec(query):
        newest.setdefault(row.script_name, row)
    return sorted(newest.values(), key=lambda r: r.script_name)


def record_health(session: Session, rows: list[HealthCheckResult]) -> None:
    session.add_all(rows)


def health_history(
    session: Session, *, check: str | None = None, since: timedelta | None = None, limit: int = 50
) -> list[HealthCheckResult]:
    query = select(HealthCheckResult).order_by(col(HealthCheckResult.id).desc()).limit(limit)
    if check:
        query = query.where(HealthCheckResult.check_name == check)
    if since is not None:
        query = query.where(col(HealthCheckResult.checked_at) >= utcnow() - since)
    return list(session.exec(query))


class ReleaseRecord(SQLModel, table=True):
    """One release operation: a deploy (what went live where, or why not, and who approved) or
    a `release rollback` (which version it brought back).

    Outcomes: `released` (a deploy went live), `rejected` (its approval was refused or timed
    out), `failed` (a deploy failed its test or check and was undone, or a rollback failed its
    check and was switched back), `aborted` (a deploy cancelled, or one that lost the
    environment's lock to another operation), `rolled_back` (a rollback put this version live
    again). A row still `running` whose process is gone is shown as `killed` (liveness.py).
    """

    __tablename__ = "release_log"

    id: int | None = Field(default=None, primary_key=True)
    environment: str = Field(index=True)
    version: str
    previous_version: str | None = None
    color: str | None = None  # the color the release went to
    outcome: str = "running"  # running | released | rejected | failed | aborted | rolled_back
    approved_by: str | None = None
    reason: str | None = Field(default=None, sa_type=Text)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    flow_run_id: str | None = None
    host: str | None = None  # where the operation runs, so a killed one is told from a running one
    pid: int | None = None


def release_history(session: Session, environment: str | None = None, limit: int = 20) -> list[ReleaseRecord]:
    query = select(ReleaseRecord).order_by(col(ReleaseRecord.id).desc()).limit(limit)
    if environment:
        query = query.where(ReleaseRecord.environment == environment)
    return list(session.exec(query))


def went_live(session: Session, environment: str, version: str) -> bool:
    """Whether a deploy of `version` ever went live in `environment` (a `released` row).

    Only `released` counts: a rollback switches only to a version that went live, so its row
    adds none, and rows that older versions wrote `rolled_back` for a failed deploy must not
    count."""
    query = select(ReleaseRecord.id).where(
        ReleaseRecord.environment == environment,
        ReleaseRecord.version == version,
        ReleaseRecord.outcome == "released",
    )
    return session.exec(query.limit(1)).first() is not None
