"""The `operation_lock` table: one operation at a time per key, across processes and machines.

A row per key (`release:production`) names its holder: what it does, its Prefect flow run,
its host and process, when it took the lock and when it last said it was alive. Taking the
lock is one transaction that inserts the row if absent and then reads it locked
(`SELECT ... FOR UPDATE` on PostgreSQL, SQLite's write lock), so of two takers at the same
moment exactly one wins, on either backend.

A holder that dies (SIGKILL, a lost machine) cannot remove its row, so the row alone never
blocks for ever: on the holder's own host the lock is free as soon as its process is gone
(the pid is checked together with the process's start time, so a reused pid does not count);
from another host, once its heartbeat is older than the lease. While it holds the lock, a
holder's background thread renews the heartbeat every quarter of the lease, and a holder
releases its row (and only its own row, by token) however it ends.

A holder that was taken over (it stopped, or lost its network, past the lease) must not act as
if it still held the lock: each step that changes what the lock protects runs in
`HeldLock.step()`, which confirms the row is still this holder's and renews its heartbeat in
one statement, and on PostgreSQL keeps that row locked until the step ends, so no one can take
it over in the middle of a step (a taker waits up to `TAKEOVER_WAIT_SECONDS`, then is refused).
A holder that was taken over gets `LockLost` and must touch nothing more.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import uuid4

from sqlalchemy import Update, delete, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlmodel import Field, Session, SQLModel, select

from flows import processes
from flows.errors import DependencyError
from flows.records.models import UTCDateTime, utcnow

#: How long a holder on another host counts as alive after its last heartbeat.
LEASE_SECONDS = 60.0
#: How long a taker waits for a holder's step in progress (PostgreSQL) before it is refused.
TAKEOVER_WAIT_SECONDS = 30


class OperationLock(SQLModel, table=True):
    __tablename__ = "operation_lock"

    key: str = Field(primary_key=True)
    token: str  # this acquisition's own: heartbeats and release touch only their own row
    operation: str  # what holds it, as a command: "release deploy 2.2.0"
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    host: str
    pid: int
    pid_started: str | None = None  # the process's start time, so a reused pid is not the holder
    waiting_for: str | None = None  # e.g. "approval" while the holder waits for a decision
    acquired_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    heartbeat_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class LockHeld(DependencyError):
    """Another live operation holds the lock (exit 2); `holder` is its row."""

    def __init__(self, holder: OperationLock) -> None:
        super().__init__(f"{holder.key} is held by {describe(holder)}")
        self.holder = holder


class LockLost(DependencyError):
    """This holder's lock was taken over (exit 2): it must change nothing more; `holder` is
    the row that holds the key now, if any."""

    def __init__(self, key: str, holder: OperationLock | None) -> None:
        now = f"{describe(holder)} holds it now" if holder is not None else "no one holds it now"
        super().__init__(f"lost the lock {key} (taken over as dead): {now}")
        self.key, self.holder = key, holder


class StepInProgress(DependencyError):
    """The holder is in the middle of a step (its row stayed locked): not taken over (exit 2)."""


def describe(row: OperationLock) -> str:
    run = f" in flow run {row.flow_run_name!r} ({row.flow_run_id})" if row.flow_run_id else ""
    since = row.acquired_at.strftime("%Y-%m-%d %H:%M:%SZ")
    return f"`{row.operation}`{run} on {row.host} (pid {row.pid}) since {since}"


def holder_alive(row: OperationLock, now: datetime, lease: float = LEASE_SECONDS) -> bool:
    if row.host == socket.gethostname():
        started = int(row.pid_started) if row.pid_started and row.pid_started.isdigit() else None
        return processes.process_alive(row.pid, started)
    return now - row.heartbeat_at < timedelta(seconds=lease)


@dataclass
class HeldLock:
    """A lock this process holds: heartbeats until `release()`."""

    key: str
    token: str
    url: str | None = None
    took_over: OperationLock | None = None  # the dead holder whose row this one replaced
    lost: bool = False
    lease: float = LEASE_SECONDS
    _renewed: float = field(default_factory=time.monotonic)  # last heartbeat the database took
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def set_waiting(self, what: str | None) -> None:
        """Say what the holder waits for (shown to those refused), or None when it goes on."""
        self._update(waiting_for=what)

    def heartbeat(self) -> bool:
        """Renew the lease; False when the row is no longer ours (taken over as dead)."""
        return self._update(heartbeat_at=utcnow())

    def _update(self, **values: object) -> bool:
        from flows.records.db import session

        started = time.monotonic()
        with session(self.url) as db:
            done = db.exec(self._mine().values(**values))
        self._confirmed(done.rowcount == 1, started, renewed="heartbeat_at" in values)
        return not self.lost

    def _mine(self) -> Update:
        return update(OperationLock).where(OperationLock.key == self.key, OperationLock.token == self.token)

    def _confirmed(self, still_mine: bool, started: float, renewed: bool) -> None:
        self.lost = self.lost or not still_mine
        if renewed and not self.lost:
            self._renewed = max(self._renewed, started)

    @contextmanager
    def step(self, warn: Callable[[str], None] | None = None) -> Iterator[None]:
        """Run one step that changes what the lock protects, only while the lock is this holder's.

        The row is confirmed ours and its heartbeat renewed in one statement, so the step
        starts with a whole lease ahead of it; on PostgreSQL that statement's row lock is held
        until the step ends, so a taker waits instead of taking over mid-step. `LockLost` when
        the lock was taken over: the step does not run. When the records database cannot be
        reached, the step still runs if the last renewal is under half a lease old (no one can
        take the lock over before the lease ends), else the database's error is raised.
        Steps do not nest, and the holder calls nothing else of this lock inside one.
        """
        from flows.records.db import get_engine, records_failure

        if self.lost:
            raise LockLost(self.key, _holder_or_none(self.key, self.url))
        started = time.monotonic()
        try:
            engine = get_engine(self.url)
            db = Session(engine)
        except Exception as exc:
            yield from self._unconfirmed(records_failure(exc, self.url), warn)
            return
        with db:
            try:
                done = db.exec(self._mine().values(heartbeat_at=utcnow()))
                if engine.dialect.name != "postgresql" or done.rowcount != 1:
                    db.commit()  # SQLite would hold its whole-database write lock for the step
            except DBAPIError as exc:
                db.rollback()
                failure = records_failure(exc, self.url)
            else:
                failure = None
                self._confirmed(done.rowcount == 1, started, renewed=True)
            if failure is not None:
                yield from self._unconfirmed(failure, warn)
                return
            if self.lost:
                raise LockLost(self.key, _holder_or_none(self.key, self.url))
            try:
                yield
            finally:
                try:
                    db.commit()  # ends the PostgreSQL row lock; the renewal stands
                except DBAPIError:
                    db.rollback()

    def _unconfirmed(self, failure: Exception, warn: Callable[[str], None] | None) -> Iterator[None]:
        if time.monotonic() - self._renewed >= self.lease / 2:
            raise failure
        if warn is not None:
            warn(f"could not confirm the lock {self.key} ({failure}); renewed recently, going on")
        yield

    def start_heartbeat(self, interval: float, warn: Callable[[str], None]) -> None:
        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    if not self.heartbeat():
                        warn(f"lost the lock {self.key}: another operation took it over")
                        return
                except Exception as exc:  # a records database down for a moment: try again later
                    warn(f"could not renew the lock {self.key}: {exc}")

        self._thread = threading.Thread(target=beat, name=f"lock-heartbeat-{self.key}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        from flows.records.db import session

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with session(self.url) as db:
            db.exec(
                delete(OperationLock).where(OperationLock.key == self.key, OperationLock.token == self.token)
            )


def acquire(
    key: str,
    operation: str,
    *,
    flow_run_id: str | None = None,
    flow_run_name: str | None = None,
    url: str | None = None,
    lease: float = LEASE_SECONDS,
    warn: Callable[[str], None] | None = None,
) -> HeldLock:
    """Take the lock `key` for `operation`, or raise `LockHeld` naming its live holder.

    A holder found dead (see the module's doc) is replaced in the same transaction; the
    returned lock then says whom it `took_over`. With `warn`, a thread renews the heartbeat
    every quarter of `lease` until `release()`.
    """
    from flows.records.db import session

    pid = os.getpid()
    mine = {
        "key": key,
        "token": uuid4().hex,
        "operation": operation,
        "flow_run_id": flow_run_id,
        "flow_run_name": flow_run_name,
        "host": socket.gethostname(),
        "pid": pid,
        "pid_started": str(processes.start_ticks(pid) or "") or None,
        "waiting_for": None,
    }
    took_over = None
    with session(url) as db:
        row = _lock_row(db, mine)
        if row.token != mine["token"]:
            now = utcnow()
            if holder_alive(row, now, lease):
                db.expunge(row)
                raise LockHeld(row)
            took_over = OperationLock.model_validate(row.model_dump())
            for name, value in mine.items():
                setattr(row, name, value)
            row.acquired_at = row.heartbeat_at = now
            db.add(row)
    held = HeldLock(key, mine["token"], url, took_over, lease=lease)
    if warn is not None:
        held.start_heartbeat(lease / 4, warn)
    return held


def _lock_row(db: Session, mine: dict[str, object]) -> OperationLock:
    """The row of `mine['key']`, inserted as `mine` when absent, locked until the commit."""
    conn = db.connection()
    if conn.dialect.name == "sqlite" and not conn.connection.dbapi_connection.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock first: concurrent takers queue up
    if conn.dialect.name == "postgresql":
        # A holder's step keeps its row locked (HeldLock.step): wait for it, but not for ever.
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{TAKEOVER_WAIT_SECONDS}s'")
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    now = utcnow()
    new_row = insert(OperationLock).values(**mine, acquired_at=now, heartbeat_at=now)
    db.exec(new_row.on_conflict_do_nothing(index_elements=["key"]))
    try:
        return db.exec(select(OperationLock).where(OperationLock.key == mine["key"]).with_for_update()).one()
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        raise StepInProgress(
            f"{mine['key']}: its holder has been changing what it protects for over "
            f"{TAKEOVER_WAIT_SECONDS}s (its row stays locked until that step ends)"
        ) from None


def _holder_or_none(key: str, url: str | None) -> OperationLock | None:
    """`holder_of`, or None when even that read fails: only to name who took a lock over."""
    try:
        return holder_of(key, url)
    except Exception:
        return None


def holder_of(key: str, url: str | None = None) -> OperationLock | None:
    """The row holding `key` now (alive or not), or None."""
    from flows.records.db import session

    with session(url) as db:
        row = db.get(OperationLock, key)
        if row is not None:
            db.expunge(row)
        return row


def live_holder(key: str, url: str | None = None, lease: float = LEASE_SECONDS) -> OperationLock | None:
    """The row holding `key` when its holder is alive, else None (a read: `acquire` decides)."""
    row = holder_of(key, url)
    return row if row is not None and holder_alive(row, utcnow(), lease) else None
