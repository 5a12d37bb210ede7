"""The `opsflow_instance` table: one random id that names this records database.

A database cannot be recognised by how its URL is spelled (host aliases, DNS names, numeric
address forms, `service=` entries all reach the same server), but it can say who it is. The id
is written once, in the transaction that creates the record tables, so every process that
shares the records database reads the same one. Maintenance procedures that write to their
target look for it there (flows/maintenance/guard.py): a target that holds it is this records
database, or a copy of it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import uuid4

from sqlalchemy import func, select
from sqlmodel import Field, SQLModel

from flows.records.models import UTCDateTime, utcnow

TABLE = "opsflow_instance"


class RecordsInstance(SQLModel, table=True):
    __tablename__ = TABLE

    id: str = Field(primary_key=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


def ensure_instance_id(conn: Any) -> None:
    """Give the records database its id when it has none; inside `create_tables`' locked
    transaction, so processes creating the tables at one moment agree on a single id."""
    if conn.execute(select(func.count()).select_from(RecordsInstance)).scalar_one() == 0:
        conn.execute(RecordsInstance.__table__.insert().values(id=uuid4().hex, created_at=utcnow()))


def read_instance_id(conn: Any) -> str | None:
    """The records database's id (the oldest row, should a copy have been merged in)."""
    statement = select(RecordsInstance.id).order_by(RecordsInstance.created_at, RecordsInstance.id).limit(1)
    return conn.execute(statement).scalar_one_or_none()
