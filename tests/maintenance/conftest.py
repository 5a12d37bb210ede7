"""Fixtures for maintenance tests on the real services: throwaway databases and Redis keys.

Each test that touches PostgreSQL gets a database of its own (`scratch_db`), dropped afterwards
even when sessions are still connected; Redis tests use database 15 and a key prefix of their
own (`redis_prefix`), deleted afterwards. Unreachable services skip, or fail under
`OPSFLOW_REQUIRE_SERVICES=1`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from uuid import uuid4

import psycopg
import pytest

from tests.conftest import ROOT
from tests.records.conftest import db_url, postgres_schema_url, service_unavailable, sqlite_url  # noqa: F401

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"


def libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A superuser URL of the test server (`OPSFLOW_TEST_POSTGRES_URL`), checked once."""
    url = libpq_url(os.environ.get("OPSFLOW_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL))
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        service_unavailable(f"PostgreSQL at {url.split('@')[-1]} is unreachable: {str(exc).strip()[:200]}")
    return url


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def url_for(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def scratch_db_name(pg_admin_url: str) -> Iterator[str]:
    """A database name nobody uses yet; the database (if a test creates it) is dropped afterwards,
    with every database whose name starts with it (restores and verification copies)."""
    name = f"opsflow_t_{uuid4().hex[:10]}"
    try:
        yield name
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            leftovers = [
                r[0]
                for r in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE %s", (name + "%",)
                ).fetchall()
            ]
        for leftover in leftovers:
            drop_database(pg_admin_url, leftover)


@pytest.fixture
def scratch_db(pg_admin_url: str, scratch_db_name: str) -> str:
    """The URL of a new, empty database of this test's own."""
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{scratch_db_name}"')
    return url_for(pg_admin_url, scratch_db_name)


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    url = os.environ.get("OPSFLOW_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        service_unavailable(f"Redis at {url} is unreachable: {exc}")
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    import redis

    prefix = f"opsflow-test-{uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    try:
        yield prefix
    finally:
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.unlink(key)
        client.close()


def opsflow(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    """`python -m flows.batch ARGS` in a subprocess against the session's Prefect server."""
    return subprocess.run(
        [sys.executable, "-m", "flows.batch", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env or dict(os.environ),
        timeout=timeout,
    )
