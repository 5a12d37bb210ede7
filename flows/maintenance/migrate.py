"""`db migrate`: apply pending SQL migrations, each in its own transaction, with a backup first.

Order of events: lock (one migrate at a time per database) → read `migration_history` →
refuse edited migrations → back up (pg_dump, a subflow) → apply each pending migration as its
own task (its SQL and its history row commit together) → on the first failure restore the
whole database from the backup taken at the start, record the failure, exit 1. Seed 003's
dependency matrix: the database must exist (`db init`), otherwise exit 2.
"""

from __future__ import annotations

import os
import re
import tempfile
import zlib
from pathlib import Path
from typing import Any

import psycopg
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import SecretStr

from flows.errors import EXIT_DRY_RUN, OpsflowError
from flows.maintenance.backup import backup_create, restore_database
from flows.maintenance.backup_files import find_backup
from flows.maintenance.guard import verified_target, writable_target
from flows.maintenance.migrations import (
    Applied,
    Migration,
    checksum,
    discover,
    out_of_order,
    plan,
    refuse_changed,
)
from flows.maintenance.pg import Target, connect, run_tool
from flows.maintenance.record import finish, recorded
from flows.maintenance.settings import load_settings

LOCK_KEY = zlib.crc32(b"opsflow.migrate")
HISTORY_DDL = """
CREATE TABLE IF NOT EXISTS public.migration_history (
    id bigserial PRIMARY KEY,
    version bigint NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    duration double precision NOT NULL DEFAULT 0,
    success boolean NOT NULL,
    error text,
    applied_by text NOT NULL DEFAULT current_user
);
CREATE UNIQUE INDEX IF NOT EXISTS migration_history_applied_version
    ON public.migration_history (version) WHERE success;
"""
_RECORD = """INSERT INTO public.migration_history (version, name, checksum, duration, success, error)
             VALUES (%s, %s, %s, %s, %s, %s)"""


class MigrationFailed(OpsflowError):
    """A migration's SQL failed; `where` is file:line of the failing statement when known."""


def read_applied(conn: psycopg.Connection) -> list[Applied]:
    """The successful rows of `migration_history` (none when the table does not exist yet)."""
    exists = conn.execute("SELECT to_regclass('public.migration_history')").fetchone()[0]
    if exists is None:
        return []
    rows = conn.execute(
        "SELECT version, name, checksum, applied_at, duration FROM public.migration_history "
        "WHERE success ORDER BY version"
    ).fetchall()
    return [Applied(*row) for row in rows]


def history_head(conn: psycopg.Connection) -> tuple[int | None, str | None]:
    """(version, checksum) of the newest applied migration: what schema verification is keyed by."""
    applied = read_applied(conn)
    return (applied[-1].version, applied[-1].checksum) if applied else (None, None)


@task(name="apply-migrations", cache_policy=NO_CACHE, persist_result=False)
def apply_migrations(target: Target, migrations: list[Migration]) -> list[dict[str, Any]]:
    """Run the migrations in order in one psql session; each with its `migration_history` row in
    a transaction of its own (BEGIN … COMMIT around `\\i file`), so both commit or neither.

    psql splits files into statements the way PostgreSQL users expect and names the file and
    line of whatever fails; ON_ERROR_STOP ends the session at the first error, leaving the
    migrations before it committed. A `no-transaction` file runs statement by statement
    (CREATE INDEX CONCURRENTLY), then its row is written. One session instead of one psql
    per file keeps a batch of small migrations close to a plain `psql -f` loop.

    psql reads private copies (a 0700 directory of files written 0600) of the bytes whose
    checksum is recorded, never the migrations directory: a file changed while earlier
    migrations run cannot put other SQL under the recorded checksum.
    """
    logger = get_run_logger()
    with tempfile.TemporaryDirectory(prefix="opsflow-migrate-") as private:
        copies = {str(write_copy(Path(private), m)): m for m in migrations}
        driver = Path(private) / "driver.sql"
        _write_private(driver, driver_script(migrations, list(copies)).encode())
        argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(driver)]
        done = run_tool(target, [*argv, "--dbname", target.conninfo(with_password=False)])
    finished = [
        int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("opsflow:applied ")
    ]
    by_version = {m.version: m for m in migrations}
    for version in finished:
        logger.info(f"applied {by_version[version].label}")
    if done.returncode != 0:
        failing = next(m for m in migrations if m.version not in finished)
        raise _failure(failing, done.stderr, applied=finished, copies=copies)
    return [{"version": v, "name": by_version[v].name} for v in finished]


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_copy(folder: Path, migration: Migration) -> Path:
    """`migration`'s SQL as it was read and hashed, in `folder` under its own file name."""
    data = migration.sql.encode("utf-8")  # the file's bytes: they were read as strict UTF-8
    if checksum(data) != migration.checksum:  # pragma: no cover - a decode/encode round trip
        raise OpsflowError(f"{migration.path}: its SQL no longer matches its checksum")
    copy = folder / f"{migration.version:08d}-{migration.path.name}"
    _write_private(copy, data)
    return copy


def driver_script(migrations: list[Migration], files: list[str]) -> str:
    """The psql script that applies `migrations`, read from `files` (their private copies), each
    in its own transaction with its record."""
    lines = []
    for migration, file in zip(migrations, files, strict=True):
        values = sql.SQL(", ").join(
            sql.Literal(v) for v in (migration.version, migration.name, migration.checksum)
        )
        # The duration is measured by the server, from the migration's start to its record.
        record = (
            sql.SQL(
                "INSERT INTO public.migration_history (version, name, checksum, duration, success) "
                "VALUES ({}, extract(epoch FROM clock_timestamp() - {}::timestamptz), true);"
            )
            .format(values, sql.SQL(":'opsflow_started'"))
            .as_string(None)
        )
        path = file.replace("'", "''")
        lines += [
            "SELECT clock_timestamp() AS opsflow_started \\gset",
            *(["BEGIN;"] if migration.transactional else []),
            f"\\i '{path}'",
            record,
            *(["COMMIT;"] if migration.transactional else []),
            f"\\echo opsflow:applied {migration.version}",
        ]
    return "\n".join(lines) + "\n"


def _failure(
    migration: Migration, stderr: str, applied: list[int], copies: dict[str, Migration]
) -> MigrationFailed:
    """psql's `psql:FILE:LINE: ERROR:  message` as a one-line error with file:line (of the
    migration file, also when psql ran its private copy)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    error = next((line for line in lines if "ERROR:" in line or "FATAL:" in line), lines[-1] if lines else "")
    match = re.match(r"psql:(?P<file>.+?):(?P<line>\d+): (?:ERROR|FATAL):\s*(?P<message>.*)", error)
    where = (
        f"{migration.path}:{match['line']}"
        if match and copies.get(match["file"]) is migration
        else str(migration.path)
    )
    message = match["message"] if match else error or "psql failed"
    for copy, original in copies.items():
        message = message.replace(copy, str(original.path))
    failure = MigrationFailed(f"migration {migration.label} failed: {message}", where=where)
    failure.migration = migration  # type: ignore[attr-defined]
    failure.applied = applied  # type: ignore[attr-defined]
    return failure


def record_failure(target: Target, migration: Migration, error: str) -> None:
    with connect(target) as conn:
        conn.execute(HISTORY_DDL)
        conn.execute(
            _RECORD, (migration.version, migration.name, migration.checksum, 0.0, False, error[:4000])
        )


@flow(name="db-migrate")
def migrate(
    dry_run: bool = False,
    backup: bool = True,
    migrations_dir: str | None = None,
    environment: str | None = None,
    database_url: SecretStr | None = None,
) -> dict[str, Any]:
    """Apply pending migrations in version order, backed up first and restored on failure."""
    logger = get_run_logger()
    settings = load_settings(environment, database_url=database_url, migrations_dir=migrations_dir)
    target = writable_target(settings, "db migrate")
    directory = settings.migrations_dir
    params = {"dry_run": dry_run, "backup": backup, "migrations_dir": str(directory), "database": str(target)}
    with recorded("db-migrate", params, settings) as outcome:
        target = verified_target(target, settings, "db migrate")
        migrations = discover(directory)
        with connect(target, autocommit=True) as lock:
            if not lock.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
                raise OpsflowError(f"another migrate is running on {target} — try again when it ends")
            if not dry_run:
                lock.execute(HISTORY_DDL)
            the_plan = plan(migrations, read_applied(lock))
            refuse_changed(the_plan)
            for gone in the_plan.missing:
                logger.warning(f"applied migration {gone.version} {gone.name} has no file in {directory}")
            for late in out_of_order(the_plan):
                logger.warning(
                    f"{late.path.name} is older than the applied head {the_plan.head}; applying it now"
                )
            pending = the_plan.pending
            outcome.details = {
                "head": the_plan.head,
                "pending": [m.label for m in pending],
                "applied": [],
                "dry_run": dry_run,
            }
            if not pending:
                outcome.message = f"{target.dbname} is up to date at version {the_plan.head}"
                outcome.exit_code = EXIT_DRY_RUN if dry_run else 0
                return finish(outcome)
            if dry_run:
                outcome.exit_code = EXIT_DRY_RUN
                outcome.message = f"dry run: {len(pending)} migration(s) would run: " + ", ".join(
                    m.label for m in pending
                )
                return finish(outcome, table=[{"version": m.version, "name": m.name} for m in pending])
            backup_id = None
            if backup:
                label = f"pre-migrate {the_plan.head or 0}->{pending[-1].version}"
                created = backup_create(label=label, environment=environment, database_url=database_url)
                backup_id = created["details"]["id"]
            state = apply_migrations(target, pending, return_state=True)
            if state.is_completed():
                applied = state.result()
                seconds = dict(
                    lock.execute(
                        "SELECT version, duration FROM public.migration_history WHERE success AND version = ANY(%s)",
                        ([a["version"] for a in applied],),
                    ).fetchall()
                )
                for row in applied:
                    row["seconds"] = round(seconds.get(row["version"], 0.0), 3)
            else:
                error = state.result(raise_on_failure=False)
                migration = getattr(error, "migration", None)
                if migration is None:  # not a migration's own failure: the tool could not run
                    raise error
                done = set(getattr(error, "applied", []))
                applied = [{"version": m.version, "name": m.name} for m in pending if m.version in done]
                lock.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
                lock.close()  # the restore needs every session on this database gone
                recovery = _recover(target, settings, backup_id, migration, str(error))
                outcome.fail(f"{error}; {recovery}")
                outcome.details |= {"applied": applied, "failed": migration.label, "where": error.where}
                return finish(outcome, table=applied or None)
            outcome.details["applied"] = applied
            outcome.rows = len(applied)
            outcome.message = (
                f"applied {len(applied)} migration(s); {target.dbname} is at version {pending[-1].version}"
            )
            if backup_id:
                outcome.details["backup"] = backup_id
    return finish(outcome, table=outcome.details["applied"])


def _recover(target: Target, settings: Any, backup_id: str | None, migration: Migration, error: str) -> str:
    """Restore the pre-run backup after a failed migration; record the failure; say what happened."""
    if backup_id is None:
        record_failure(target, migration, error)
        return "no backup was taken (--no-backup): migrations before it stay applied"
    manifest, path = find_backup(settings.backups(), backup_id, target.dbname)
    result = restore_database(target, manifest, path, keep_replaced=True)
    record_failure(target, migration, error)
    return f"database restored from backup {backup_id}" + (
        f" (the failed state is kept as database {result['replaced']})" if result.get("replaced") else ""
    )


def migration_status(settings: Any) -> dict[str, Any]:
    """Applied, pending, changed and missing migrations; read-only, no Prefect run."""
    target = Target.from_url(settings.require_database())
    migrations = discover(Path(settings.migrations_dir))
    with connect(target) as conn:
        the_plan = plan(migrations, read_applied(conn))
        failures = []
        if conn.execute("SELECT to_regclass('public.migration_history')").fetchone()[0]:
            failures = conn.execute(
                "SELECT version, name, applied_at, error FROM public.migration_history "
                "WHERE NOT success ORDER BY id DESC LIMIT 5"
            ).fetchall()
    changed = {a.version for a, _ in the_plan.changed}
    rows = [
        {
            "version": a.version,
            "name": a.name,
            "state": "CHANGED" if a.version in changed else "applied",
            "applied_at": a.applied_at.isoformat(timespec="seconds"),
            "seconds": round(a.duration, 3),
        }
        for a in the_plan.applied
    ]
    rows += [
        {"version": m.version, "name": m.name, "state": "pending", "applied_at": "", "seconds": ""}
        for m in the_plan.pending
    ]
    return {
        "database": str(target),
        "head": the_plan.head,
        "migrations": rows,
        "pending": len(the_plan.pending),
        "changed": sorted(changed),
        "missing": [a.version for a in the_plan.missing],
        "recent_failures": [
            {"version": v, "name": n, "at": at.isoformat(timespec="seconds"), "error": e}
            for v, n, at, e in failures
        ],
    }
