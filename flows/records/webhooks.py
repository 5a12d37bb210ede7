"""The `webhook_events` table: every webhook event accepted, by id, so a replay is refused.

The check is the insert itself (`INSERT ... ON CONFLICT DO NOTHING` on the primary key), so two
deliveries of one id at the same moment, in one process or on two machines sharing PostgreSQL,
cannot both pass; and it lives in the records database, so a restart does not forget.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Field, Session, SQLModel

from flows.records.models import UTCDateTime, utcnow


class WebhookEvent(SQLModel, table=True):
    __tablename__ = "webhook_events"

    key: str = Field(primary_key=True, max_length=200)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


def remember_event(db: Session, key: str, *, keep: timedelta) -> bool:
    """True the first time `key` arrives, False for a repeat; forgets keys older than `keep`."""
    conn = db.connection()
    now = utcnow()
    conn.execute(delete(WebhookEvent).where(WebhookEvent.received_at < now - keep))  # type: ignore[arg-type]
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(WebhookEvent)
        .values(key=key, received_at=now)
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(WebhookEvent.key)  # type: ignore[arg-type]
    )
    # A row comes back only when this insert created it (rowcount is not reliable across drivers).
    return conn.execute(statement).first() is not None
