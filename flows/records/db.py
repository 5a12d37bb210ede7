"""Where the project's records live, and how to reach them safely.

One database holds every record table: an SQLite file by default, so a laptop run needs no
service, and PostgreSQL when `OPSFLOW_DATABASE_URL` is set, so many workers can share it.
Engines are cached per URL because each one owns a connection pool; tables are created on
first use so a fresh machine needs no setup step. Connection problems surface as
`ConnectionFailure` (exit code 4) with the password redacted, because these messages end
up on terminals and in Prefect logs.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import URL, Engine, create_engine, event, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlmodel import Session, SQLModel

from flows.errors import ConnectionFailure, OpsflowError, PermissionFailure, ValidationError

# Imported for its side effect: the record tables must be in SQLModel.metadata before create_all.
from flows.records import breakers as _breakers  # noqa: F401
from flows.records import instance as _instance
from flows.records import locks as _locks  # noqa: F401
from flows.records import models as _models  # noqa: F401
from flows.records import procedures as _procedures  # noqa: F401
from flows.records import webhooks as _webhooks  # noqa: F401
from flows.records import workflows as _workflows  # noqa: F401
from flows.secrets import scrub_text

#: Key of the PostgreSQL advisory lock that serialises table creation across processes.
SCHEMA_LOCK_KEY = zlib.crc32(b"opsflow.records.create_all")

_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg"}
# SQLSTATE classes of a server that cannot be reached or refuses us: connection exception,
# invalid authorisation, unknown database, operator intervention (shutdown, starting up).
_CONNECTION_SQLSTATES = ("08", "28", "3D", "57P")


class _RecordsSettings(BaseSettings):
    """The two settings this module needs; read on every call so tests and CLIs can change them."""

    model_config = SettingsConfigDict(env_prefix="OPSFLOW_", extra="ignore")

    database_url: SecretStr | None = None
    home: Path | None = None


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def redacted(url: str | URL) -> str:
    """The URL as it may be shown to people: password (also a `?password=` one) replaced by ***."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<unparseable database URL>"
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    # a password with an unencoded `@` leaves its end in the host: scrub_text takes it out
    return scrub_text(parsed.render_as_string(hide_password=True))


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; `postgres://` and `postgresql://` use the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValidationError(
            "OPSFLOW_DATABASE_URL is not a database URL — use sqlite:///PATH or postgresql://USER@HOST/DB"
        ) from None
    if parsed.drivername in _POSTGRES_SCHEMES:
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername in {"sqlite", "sqlite+pysqlite"}:
        return parsed
    raise ValidationError(
        f"unsupported records database {parsed.drivername!r} in {redacted(parsed)} — use sqlite or postgresql"
    )


def database_url() -> str:
    """`OPSFLOW_DATABASE_URL`, else the SQLite file `records.db` under `OPSFLOW_HOME` (~/.opsflow)."""
    # Called for every committed file: settings are read once per distinct environment.
    return _database_url(os.environ.get("OPSFLOW_DATABASE_URL"), os.environ.get("OPSFLOW_HOME"))


@functools.lru_cache(maxsize=16)
def _database_url(_url: str | None, _home: str | None) -> str:
    settings = _RecordsSettings()
    if settings.database_url is not None and settings.database_url.get_secret_value().strip():
        url = normalize_url(settings.database_url.get_secret_value().strip())
        return url.render_as_string(hide_password=False)
    home = (settings.home or Path.home() / ".opsflow").expanduser().resolve()
    _make_parent(home / "records.db")
    return f"sqlite:///{home / 'records.db'}"


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise PermissionFailure(
            f"cannot create {path.parent} for the records database — check its permissions"
        ) from None
    except OSError as exc:
        raise ValidationError(
            f"cannot create {path.parent} for the records database: {exc.strerror}"
        ) from None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    # Switching a new file to WAL needs it to itself, and SQLite answers "locked" at once
    # instead of using the busy timeout; several processes opening a new file all get here.
    deadline = time.monotonic() + 30
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")  # PostgreSQL enforces them; SQLite must too
    cursor.close()


def make_engine(url: str | URL) -> Engine:
    """A new, uncached engine with the per-backend settings; most callers want `get_engine`."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            _make_parent(Path(parsed.database).expanduser().resolve())
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": 10}
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


def create_tables(engine: Engine) -> None:
    """Create every missing record table; safe when several processes do it at the same moment."""
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                # Transactional DDL under a transaction-scoped lock: released however this ends.
                conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
            else:
                # Take SQLite's write lock before checking what exists, so two creators queue up.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            SQLModel.metadata.create_all(conn)
            _add_missing_columns(conn)
            _instance.ensure_instance_id(conn)
            conn.commit()
    except DBAPIError as exc:
        failure = translate_error(exc, engine.url)
        if failure is None:
            raise
        raise failure from exc


def _add_missing_columns(conn: Any) -> None:
    """Add the nullable columns a newer opsflow defines to tables an older one created:
    `create_all` creates missing tables only, and records outlive upgrades."""
    existing = inspect(conn)
    for table in SQLModel.metadata.sorted_tables:
        if not existing.has_table(table.name):
            continue
        present = {column["name"] for column in existing.get_columns(table.name)}
        for column in table.columns:
            if column.name in present or not column.nullable or column.primary_key:
                continue
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}')


def get_engine(url: str | URL | None = None) -> Engine:
    """The engine for `url` (default `database_url()`), created once per URL with its tables."""
    parsed = normalize_url(url if url is not None else database_url())
    key = parsed.render_as_string(hide_password=False)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = make_engine(parsed)
            try:
                create_tables(engine)
            except BaseException:
                engine.dispose()
                raise
            _engines[key] = engine
        return engine


def instance_id(url: str | URL | None = None) -> str:
    """The random id the records database was given when its tables were created
    (flows/records/instance.py); given again should someone have deleted it since."""
    engine = get_engine(url)

    def read() -> str | None:
        with engine.connect() as conn:
            return _instance.read_instance_id(conn)

    try:
        found = read()
    except DBAPIError as exc:
        if translate_error(exc, engine.url) is not None:
            raise records_failure(exc, engine.url) from exc
        found = None  # its table was dropped after this process created it
    if found is None:
        create_tables(engine)
        try:
            found = read()
        except DBAPIError as exc:
            raise records_failure(exc, engine.url) from exc
    if found is None:  # pragma: no cover - create_tables always leaves one
        raise records_failure(RuntimeError("no instance id after creating the tables"), engine.url)
    return found


def dispose_engines() -> None:
    """Close every cached engine's connections (tests, and a child process after fork)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def translate_error(exc: DBAPIError, url: str | URL) -> OpsflowError | None:
    """`ConnectionFailure` when `exc` means the database cannot be reached or refused us, else None."""
    orig = exc.orig
    detail = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    if make_url(url).get_backend_name() == "sqlite":
        if "unable to open database file" not in detail:
            return None
    else:
        sqlstate = getattr(orig, "sqlstate", None)
        # No SQLSTATE on an operational error means libpq itself failed: refused, timed out, DNS.
        client_side = sqlstate is None and isinstance(exc, OperationalError | InterfaceError)
        if not (
            exc.connection_invalidated or client_side or (sqlstate or "").startswith(_CONNECTION_SQLSTATES)
        ):
            return None
    password = make_url(url).password
    if password:
        detail = detail.replace(str(password), "***")
    return ConnectionFailure(
        f"cannot reach the records database {redacted(url)}: {detail} — "
        "check OPSFLOW_DATABASE_URL and that the server is running"
    )


def records_failure(exc: BaseException, url: str | URL | None = None) -> OpsflowError:
    """Any failure of the records database as one opsflow error, password hidden: a lost
    connection is `ConnectionFailure`, and so is any other database error, since either way
    the records cannot be written (a dropped table, a full disk)."""
    if isinstance(exc, OpsflowError):
        return exc
    target = url if url is not None else database_url()
    if isinstance(exc, DBAPIError):
        failure = translate_error(exc, target)
        if failure is not None:
            return failure
        orig = exc.orig
        detail = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    else:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    password = make_url(target).password
    if password:
        detail = detail.replace(str(password), "***")
    return ConnectionFailure(f"the records database {redacted(target)} failed: {detail}")


@contextmanager
def session(url: str | URL | None = None) -> Iterator[Session]:
    """One unit of work: commits when the block ends normally, rolls back when it raises."""
    engine = get_engine(url)
    with Session(engine, expire_on_commit=False) as db:
        try:
            yield db
            db.commit()
        except DBAPIError as exc:
            db.rollback()
            failure = translate_error(exc, engine.url)
            if failure is None:
                raise
            raise failure from exc
        except BaseException:
            db.rollback()
            raise
