"""Seen webhook events: one insert decides, on SQLite and PostgreSQL, even when racing."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import update

from flows.records.db import session
from flows.records.models import utcnow
from flows.records.webhooks import WebhookEvent, remember_event

KEEP = timedelta(days=1)


def test_an_event_is_new_once(db_url):
    with session(db_url) as db:
        assert remember_event(db, "id:evt-1", keep=KEEP) is True
    with session(db_url) as db:
        assert remember_event(db, "id:evt-1", keep=KEEP) is False
        assert remember_event(db, "id:evt-2", keep=KEEP) is True


def test_racing_deliveries_of_one_event_let_exactly_one_through(db_url):
    with session(db_url) as db:
        remember_event(db, "id:warm-up", keep=KEEP)  # tables exist before the race starts
    start = threading.Barrier(8)
    answers: list[bool] = []

    def deliver() -> None:
        start.wait()
        with session(db_url) as db:
            answers.append(remember_event(db, "id:evt-race", keep=KEEP))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(answers) == [False] * 7 + [True]


def test_events_older_than_the_retention_are_forgotten(db_url):
    with session(db_url) as db:
        remember_event(db, "id:old", keep=KEEP)
    with session(db_url) as db:
        db.exec(update(WebhookEvent).values(received_at=utcnow() - KEEP - timedelta(minutes=1)))
    with session(db_url) as db:
        assert remember_event(db, "id:old", keep=KEEP) is True
