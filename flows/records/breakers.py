"""The `circuit_breaker` table: one row per named breaker, shared by every run and process.

Each change reads and writes the row in one transaction that holds it: `SELECT ... FOR UPDATE`
on PostgreSQL, SQLite's write lock (BEGIN IMMEDIATE) on SQLite, so two runs deciding at the
same moment see each other's decision (one trial in half-open, every failure counted).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Field, Session, SQLModel, col, select

from flows.records.models import UTCDateTime, utcnow
from flows.workflow.breaker import BreakerState


class CircuitBreakerRow(SQLModel, table=True):
    __tablename__ = "circuit_breaker"

    name: str = Field(primary_key=True)
    state: str = "closed"
    failures: int = 0
    opened_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    trial_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_run: str | None = None


def _state(row: CircuitBreakerRow) -> BreakerState:
    return BreakerState(row.name, row.state, row.failures, row.opened_at, row.trial_since)


def change(
    db: Session, name: str, decide: Callable[[BreakerState], tuple[object, BreakerState]], run_id: str | None
) -> tuple[object, BreakerState]:
    """Apply `decide` to breaker `name` under a lock; returns what it returned."""
    conn = db.connection()
    if conn.dialect.name == "sqlite" and not conn.connection.dbapi_connection.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock first: concurrent deciders queue up
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    new_row = insert(CircuitBreakerRow).values(name=name, state="closed", failures=0, updated_at=utcnow())
    db.exec(new_row.on_conflict_do_nothing(index_elements=["name"]))  # first use, by any number at once
    row = db.exec(select(CircuitBreakerRow).where(CircuitBreakerRow.name == name).with_for_update()).one()
    answer, new = decide(_state(row))
    row.state, row.failures, row.opened_at, row.trial_since = (
        new.state,
        new.failures,
        new.opened_at,
        new.trial_since,
    )
    row.updated_at, row.last_run = utcnow(), run_id or row.last_run
    db.add(row)
    return answer, new


def list_breakers(db: Session) -> list[CircuitBreakerRow]:
    return list(db.exec(select(CircuitBreakerRow).order_by(col(CircuitBreakerRow.name))))


def reset(db: Session, name: str) -> bool:
    row = db.get(CircuitBreakerRow, name)
    if row is None:
        return False
    db.delete(row)
    db.flush()
    return True
