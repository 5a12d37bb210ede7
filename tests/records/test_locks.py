"""`operation_lock`: one holder per key, on SQLite and PostgreSQL, and dead holders taken over."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from datetime import timedelta

import pytest

from flows.records import db
from flows.records.locks import LEASE_SECONDS, LockHeld, OperationLock, acquire, holder_of, live_holder
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
    from flows.records.locks import HeldLock

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
