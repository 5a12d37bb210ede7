"""Database fixtures for record tests, reusable by any test package that needs the records.

`db_url` runs a test once per backend: an SQLite file in `tmp_path`, and PostgreSQL (from
`OPSFLOW_TEST_POSTGRES_URL`) in a schema of its own that is dropped afterwards, so tests never
touch real data and several test runs can share one server. An unreachable PostgreSQL skips
those tests with the reason, or fails them when `OPSFLOW_REQUIRE_SERVICES=1` (as `.ci/run` sets).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from uuid import uuid4

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from flows.records.db import dispose_engines, normalize_url, redacted

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def service_unavailable(reason: str) -> None:
    """Skip the test, or fail it when the run requires services (`OPSFLOW_REQUIRE_SERVICES=1`)."""
    if os.environ.get("OPSFLOW_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (OPSFLOW_REQUIRE_SERVICES=1, so this fails instead of skipping)")
    pytest.skip(reason)


def reachable_postgres(url: str) -> str:
    """`url` in its psycopg form once a `SELECT 1` through it works; else skip or fail."""
    normalized = normalize_url(url).render_as_string(hide_password=False)
    engine = create_engine(normalized, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        service_unavailable(f"PostgreSQL at {redacted(normalized)} is unreachable: {detail}")
    finally:
        engine.dispose()
    return normalized


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test PostgreSQL server's URL (`OPSFLOW_TEST_POSTGRES_URL`), checked once per session."""
    return reachable_postgres(os.environ.get("OPSFLOW_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """A URL whose connections use a new, empty schema (via `search_path`), dropped afterwards."""
    schema = f"opsflow_test_{uuid4().hex[:12]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        dispose_engines()  # pooled connections of this schema must not outlive it
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> Iterator[str]:
    """A URL of a new SQLite file in the test's own directory."""
    try:
        yield f"sqlite:///{tmp_path / 'records.db'}"
    finally:
        dispose_engines()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def db_url(request) -> str:
    """The URL of an empty records database, once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_schema_url")


def create_tables_at_once(url: str, creators: int = 4) -> None:
    """`creators` engines create the records tables at one moment (threads released together);
    fails the test with what any of them raised."""
    import threading

    from flows.records import db

    engines = [db.make_engine(url) for _ in range(creators)]
    start, errors = threading.Barrier(creators), []

    def create(engine):
        start.wait()
        try:
            db.create_tables(engine)
        except Exception as exc:  # collected: a thread's exception would otherwise be lost
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        db.create_tables(engines[0])  # and again, once they exist
    finally:
        for engine in engines:
            engine.dispose()
    assert errors == []
