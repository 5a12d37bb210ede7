"""The record tables of workflow runs: `workflow_run` (one row per run) and `workflow_step`.

The run row is written when the run starts and each step row as the step settles, so a run
killed outright (SIGKILL, a lost machine) keeps its finished steps and stays visibly
`running`: that is what `resume` starts from. Parameters are stored with secrets masked.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Text, delete
from sqlmodel import Field, Session, SQLModel, col, select

from flows.records.models import UTCDateTime, utcnow

RUN_STATES = ("running", "completed", "failed")
#: Step states whose work need not be done again when the run is resumed.
DONE_STEP_STATES = ("Completed", "Restored")


class WorkflowRunRecord(SQLModel, table=True):
    """One run of one workflow file (a Prefect flow run of `run-workflow`)."""

    __tablename__ = "workflow_run"

    id: str = Field(primary_key=True)  # the Prefect flow run id, also the workflow_id
    workflow: str = Field(index=True)
    path: str = Field(sa_type=Text)
    checksum: str  # sha256 of the workflow file as it was run
    environment: str = "development"
    parameters: str = Field(default="{}", sa_type=Text)
    options: str = Field(default="{}", sa_type=Text)  # parallel, continue_on_error, ...
    state: str = Field(default="running", index=True)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    duration: float | None = None
    exit_code: int | None = None
    message: str | None = Field(default=None, sa_type=Text)
    resumed_from: str | None = None
    host: str | None = None
    pid: int | None = None

    def parameter_dict(self) -> dict[str, Any]:
        return json.loads(self.parameters)

    def option_dict(self) -> dict[str, Any]:
        return json.loads(self.options)


class WorkflowStepRecord(SQLModel, table=True):
    """One settled step (or hook) of one workflow run."""

    __tablename__ = "workflow_step"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="workflow_run.id", index=True)
    step: str
    section: str = "steps"
    state: str  # Completed | Failed | TimedOut | Skipped | NotRun | Restored
    attempts: int = 0
    duration: float = 0.0
    exit_code: int | None = None
    reason: str | None = Field(default=None, sa_type=Text)
    output_name: str | None = None  # the step's `capture_output`
    output: str | None = Field(default=None, sa_type=Text)
    settled_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class StepProcessRecord(SQLModel, table=True):
    """A step's command while it runs: the row is written when it starts, deleted when it ends.

    A run killed outright leaves its rows behind: they name the process groups a `resume` or
    a new run must not overlap (the pid and its start time name one process ever; the boot
    id tells a restarted machine)."""

    __tablename__ = "workflow_step_process"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    step: str
    host: str
    boot_id: str = ""
    pgid: int
    start_ticks: int | None = Field(default=None, sa_type=BigInteger)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


def start_run(session: Session, row: WorkflowRunRecord) -> None:
    session.add(row)


def add_step(session: Session, row: WorkflowStepRecord) -> None:
    session.add(row)


def finish_run(session: Session, run_id: str, *, exit_code: int, message: str | None) -> None:
    row = session.get(WorkflowRunRecord, run_id)
    if row is None:
        return
    row.ended_at = utcnow()
    row.duration = (row.ended_at - row.started_at).total_seconds()
    row.exit_code = exit_code
    row.state = "completed" if exit_code == 0 else "failed"
    row.message = message
    session.add(row)


def get_run(session: Session, run_id: str) -> WorkflowRunRecord | None:
    """The run with this id, or the only one whose id starts with it (ids are long)."""
    row = session.get(WorkflowRunRecord, run_id)
    if row is not None or len(run_id) < 4:
        return row
    query = select(WorkflowRunRecord).where(col(WorkflowRunRecord.id).startswith(run_id)).limit(2)
    rows = list(session.exec(query))
    return rows[0] if len(rows) == 1 else None


def list_runs(session: Session, *, workflow: str | None = None, limit: int = 20) -> list[WorkflowRunRecord]:
    query = select(WorkflowRunRecord).order_by(col(WorkflowRunRecord.started_at).desc()).limit(limit)
    if workflow:
        query = query.where(WorkflowRunRecord.workflow == workflow)
    return list(session.exec(query))


def resumed_from(session: Session, run_id: str) -> list[WorkflowRunRecord]:
    """The runs that resumed `run_id`."""
    return list(session.exec(select(WorkflowRunRecord).where(WorkflowRunRecord.resumed_from == run_id)))


def run_steps(session: Session, run_id: str) -> list[WorkflowStepRecord]:
    query = select(WorkflowStepRecord).where(WorkflowStepRecord.run_id == run_id)
    return list(session.exec(query.order_by(col(WorkflowStepRecord.id))))


def done_steps(session: Session, run_id: str) -> list[WorkflowStepRecord]:
    """The main steps of a run that completed (or were restored), in the order they settled."""
    return [s for s in run_steps(session, run_id) if s.section == "steps" and s.state in DONE_STEP_STATES]


def step_processes(session: Session) -> list[tuple[StepProcessRecord, WorkflowRunRecord | None]]:
    """Every recorded running step command, with its run (rows exist only while they run, or
    are left by a run that was killed)."""
    query = select(StepProcessRecord, WorkflowRunRecord).join(
        WorkflowRunRecord,
        col(WorkflowRunRecord.id) == col(StepProcessRecord.run_id),
        isouter=True,
    )
    return [(row, run) for row, run in session.exec(query.order_by(col(StepProcessRecord.id)))]


def runs_older_than(session: Session, cutoff: datetime) -> list[WorkflowRunRecord]:
    query = select(WorkflowRunRecord).where(col(WorkflowRunRecord.started_at) < cutoff)
    return list(session.exec(query.order_by(col(WorkflowRunRecord.started_at))))


def delete_runs(session: Session, run_ids: list[str]) -> int:
    """Delete these runs and their steps; returns how many step rows went with them."""
    if not run_ids:
        return 0
    steps = session.exec(  # type: ignore[call-overload]
        delete(WorkflowStepRecord).where(col(WorkflowStepRecord.run_id).in_(run_ids))
    )
    session.exec(delete(StepProcessRecord).where(col(StepProcessRecord.run_id).in_(run_ids)))  # type: ignore[call-overload]
    session.exec(delete(WorkflowRunRecord).where(col(WorkflowRunRecord.id).in_(run_ids)))  # type: ignore[call-overload]
    return steps.rowcount or 0
