"""The records database's instance id: one per database, agreed on by every process creating it."""

from __future__ import annotations

from sqlalchemy import text

from flows.records import db
from flows.records.instance import TABLE
from tests.records.conftest import create_tables_at_once


def ids(url: str) -> list[str]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(text(f"SELECT id FROM {TABLE}"))]
    finally:
        engine.dispose()


def test_creators_at_one_moment_agree_on_a_single_id(db_url):
    create_tables_at_once(db_url)
    found = ids(db_url)
    assert len(found) == 1 and len(found[0]) == 32
    assert db.instance_id(db_url) == found[0]


def test_an_id_deleted_or_dropped_is_given_again(db_url):
    first = db.instance_id(db_url)
    with db.get_engine(db_url).begin() as conn:
        conn.execute(text(f"DELETE FROM {TABLE}"))
    second = db.instance_id(db_url)
    assert second != first and ids(db_url) == [second]
    with db.get_engine(db_url).begin() as conn:
        conn.execute(text(f"DROP TABLE {TABLE}"))
    assert db.instance_id(db_url) == ids(db_url)[0]
