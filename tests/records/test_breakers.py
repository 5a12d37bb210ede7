"""Circuit breakers: the pure state machine, and its shared row under concurrent runs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from flows.records import db
from flows.records.breakers import change, list_breakers, reset
from flows.workflow.breaker import CLOSED, HALF_OPEN, OPEN, BreakerState, admit, record

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
RECOVERY = timedelta(seconds=60)


def test_failures_open_it_and_time_lets_one_trial_through():
    state = BreakerState("db")
    for n in (1, 2):
        state = record(state, False, T0, threshold=3)
        assert (state.state, state.failures) == (CLOSED, n)
    assert record(record(state, True, T0, 3), False, T0, 3).failures == 1  # a success resets the count
    state = record(state, False, T0, threshold=3)
    assert (state.state, state.opened_at) == (OPEN, T0)
    assert admit(state, T0 + timedelta(seconds=59), RECOVERY) == (False, state)
    allowed, trial = admit(state, T0 + RECOVERY, RECOVERY)
    assert allowed and trial.state == HALF_OPEN and trial.trial_since == T0 + RECOVERY
    assert not admit(trial, T0 + RECOVERY + timedelta(seconds=1), RECOVERY)[0]  # one trial at a time
    assert admit(trial, T0 + 2 * RECOVERY, RECOVERY)[0]  # a trial that never reported is given up
    assert record(trial, True, T0, 3) == BreakerState("db")
    reopened = record(trial, False, T0 + RECOVERY, 3)
    assert (reopened.state, reopened.opened_at, reopened.failures) == (OPEN, T0 + RECOVERY, 4)
    assert "open since 2026-11-26 12:01:00Z after 4 failures; a trial run in 60s" in reopened.describe(
        RECOVERY, T0 + RECOVERY
    )


def test_concurrent_runs_count_every_failure_and_share_one_trial(db_url):
    def fail():
        with db.session(db_url) as s:
            change(s, "shared", lambda st: (None, record(st, False, datetime.now(UTC), 8)), "run")

    threads = [threading.Thread(target=fail) for _ in range(8)]  # first use of the row, all at once
    [t.start() for t in threads]
    [t.join() for t in threads]
    with db.session(db_url) as s:
        (row,) = list_breakers(s)
    assert (row.state, row.failures) == (OPEN, 8)

    answers = []

    def try_trial():
        with db.session(db_url) as s:
            # each decides at the moment recovery ends for the breaker as it finds it
            decide = lambda st: admit(st, (st.opened_at or T0) + RECOVERY, RECOVERY)  # noqa: E731
            answers.append(change(s, "shared", decide, "t")[0])

    threads = [threading.Thread(target=try_trial) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(answers) == [False] * 5 + [True]  # the first turns it half-open: the one trial
    with db.session(db_url) as s:
        assert list_breakers(s)[0].state == HALF_OPEN
        assert reset(s, "shared") and not reset(s, "shared")
