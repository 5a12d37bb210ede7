"""`operation_lock`: one holder per key, on SQLite and PostgreSQL, dead holders taken over, and a
holder that was taken over changing nothing more."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from flows.errors import ConnectionFailure
from flows.records import db
from flows.records.locks import (
    LEASE_SECONDS,
    HeldLock,
    LockHeld,
    LockLost,
    OperationLock,
    acquire,
    holder_of,
    live_holder,
)
from flows.records.models import utcnow


def test_of_many_takers_at_once_exactly_one_holds_it(db_url):
    won, refused = [], []
    start = threading.Barrier(8)

    def take(n: int) -> None:
        start.wait()
        try:
            won.append(acquire("release:prod", f"op {n}", url=db_url))
        except LockHeld as exc:
            refused.append(exc)

    threads = [threading.Thread(target=take, args=(n,)) for n in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(won) == 1 and len(refused) == 7
    holder = holder_of("release:prod", db_url)
    assert holder.token == won[0].token and all(e.holder.token == won[0].token for e in refused)
    assert all(e.exit_code == 2 and holder.operation in str(e) for e in refused)
    assert acquire("release:staging", "other key", url=db_url).took_over is None  # keys are separate

    won[0].release()
    assert holder_of("release:prod", db_url) is None
    acquire("release:prod", "next", url=db_url).release()


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def plant(db_url: str, **fields) -> OperationLock:
    """A lock row as some other holder left it."""
    now = utcnow()
    values = {"key": "release:prod", "token": "theirs", "operation": "release deploy 9", "host": "elsewhere",
              "pid": 4242, "acquired_at": now, "heartbeat_at": now} | fields  # fmt: skip
    with db.session(db_url) as s:
        s.add(OperationLock(**values))
    return OperationLock(**values)


@pytest.mark.parametrize(
    ("holder", "alive"),
    [
        ({"host": "elsewhere"}, True),  # another machine, heartbeat fresh
        ({"host": "elsewhere", "heartbeat_at": utcnow() - timedelta(seconds=LEASE_SECONDS + 5)}, False),
        ({"host": socket.gethostname(), "pid": os.getpid()}, True),  # this very process
        ({"host": socket.gethostname(), "pid": "dead"}, False),  # a process of this host that ended
        ({"host": socket.gethostname(), "pid": os.getpid(), "pid_started": "1"}, False),  # a reused pid
    ],
)
def test_a_dead_holder_is_taken_over_and_a_live_one_is_not(db_url, holder, alive):
    if holder.get("pid") == "dead":
        holder["pid"] = dead_pid()
    if holder.get("pid") == os.getpid() and "pid_started" not in holder:
        from flows.processes import start_ticks

        holder["pid_started"] = str(start_ticks(os.getpid()))
    plant(db_url, **holder)
    assert (live_holder("release:prod", db_url) is not None) is alive
    if alive:
        with pytest.raises(LockHeld, match="release deploy 9"):
            acquire("release:prod", "release rollback", url=db_url)
        assert holder_of("release:prod", db_url).token == "theirs"
        return
    mine = acquire("release:prod", "release rollback", url=db_url)
    assert mine.took_over is not None and mine.took_over.token == "theirs"
    assert holder_of("release:prod", db_url).operation == "release rollback"
    # The old holder, should it come back, can neither renew nor remove the new holder's row.
    ghost = HeldLock("release:prod", "theirs", db_url)
    assert ghost.heartbeat() is False and ghost.lost
    ghost.release()
    assert holder_of("release:prod", db_url).token == mine.token
    mine.release()
    assert holder_of("release:prod", db_url) is None


def test_the_holder_renews_its_heartbeat_and_says_what_it_waits_for(db_url):
    warnings: list[str] = []
    held = acquire("release:prod", "release deploy 1", url=db_url, lease=0.4, warn=warnings.append)
    first = holder_of("release:prod", db_url).heartbeat_at
    held.set_waiting("approval")
    deadline = utcnow() + timedelta(seconds=60)
    while holder_of("release:prod", db_url).heartbeat_at == first and utcnow() < deadline:
        threading.Event().wait(0.05)
    row = holder_of("release:prod", db_url)
    assert row.heartbeat_at > first and row.waiting_for == "approval"
    held.release()
    assert warnings == [] and holder_of("release:prod", db_url) is None


def test_a_holder_that_was_taken_over_runs_no_more_steps(db_url):
    mine = acquire("release:prod", "release deploy 1", url=db_url)
    ran: list[str] = []
    with mine.step():
        ran.append("while it holds the lock")
    with db.session(db_url) as s:  # as if it ran on another machine and stopped past its lease
        s.exec(update(OperationLock).where(OperationLock.key == "release:prod").values(host="elsewhere"))
    theirs = acquire("release:prod", "release deploy 2", url=db_url, lease=0)
    with pytest.raises(LockLost, match="release deploy 2") as lost, mine.step():
        ran.append("after it was taken over")
    assert ran == ["while it holds the lock"] and lost.value.exit_code == 2 and mine.lost
    with pytest.raises(LockLost), mine.step():  # once lost, always lost
        pass
    assert holder_of("release:prod", db_url).token == theirs.token
    theirs.release()


@pytest.mark.services
def test_on_postgresql_no_one_takes_over_in_the_middle_of_a_step(postgres_schema_url):
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    mine = acquire("release:prod", "release deploy 1", url=postgres_schema_url)
    with db.session(postgres_schema_url) as s:  # on another machine, silent past its lease
        s.exec(
            update(OperationLock)
            .where(OperationLock.key == "release:prod")
            .values(host="elsewhere", heartbeat_at=utcnow() - timedelta(seconds=LEASE_SECONDS * 2))
        )
    name = f"taker-{os.getpid()}-{id(mine)}"
    taker_url = make_url(postgres_schema_url).update_query_dict({"application_name": name})
    outcome: list[object] = []

    def take() -> None:
        try:
            outcome.append(acquire("release:prod", "release deploy 2", url=taker_url.render_as_string(False)))
        except LockHeld as exc:
            outcome.append(exc)

    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name AND wait_event_type = 'Lock'"
    )
    with mine.step():
        taker = threading.Thread(target=take)
        taker.start()
        deadline = utcnow() + timedelta(seconds=60)
        with db.get_engine(postgres_schema_url).connect() as conn:
            while not conn.execute(text(waiting), {"name": name}).scalar() and utcnow() < deadline:
                threading.Event().wait(0.05)
            assert conn.execute(text(waiting), {"name": name}).scalar() == 1  # it waits for the step
        assert outcome == []
    taker.join(timeout=60)
    # The step renewed the holder's heartbeat: once it ended, the holder was alive, not taken over.
    assert len(outcome) == 1 and isinstance(outcome[0], LockHeld), outcome
    assert holder_of("release:prod", postgres_schema_url).token == mine.token and not mine.lost
    mine.release()


def test_a_step_goes_on_without_the_records_only_within_half_a_lease():
    held = HeldLock("release:prod", "mine", "postgresql://ops@127.0.0.1:1/records", lease=LEASE_SECONDS)
    warnings: list[str] = []
    with held.step(warnings.append):
        pass
    assert len(warnings) == 1 and "renewed recently" in warnings[0]
    held._renewed -= LEASE_SECONDS / 2  # the last renewal the database took is half a lease old
    with pytest.raises(ConnectionFailure), held.step(warnings.append):
        raise AssertionError("the step must not run")
