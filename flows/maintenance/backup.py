"""Backups of the target database with pg_dump: create, verify by restoring, restore, prune.

- create: pg_dump custom format (compressed) of one consistent snapshot, whose exact row
  counts per table go into the manifest; checksummed; a killed dump is never listed.
- verify: the checksum, then a real restore into a scratch database whose row counts must
  match the manifest. A backup proven once is not restored again: that proof is a Prefect
  task cached by the backup's checksum (persisted, so it holds across runs and machines that
  share result storage); `--no-cache` proves it again.
- restore: into a new database first (the target is untouched if that fails), then swapped in
  by renaming; the replaced database is kept under a `_pre_restore_` name unless asked not to.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import SecretStr

from flows.errors import EXIT_DRY_RUN, OpsflowError, ValidationError
from flows.maintenance.backup_files import (
    Manifest,
    database_dir,
    find_backup,
    list_backups,
    new_backup_id,
    parse_duration,
    select_prunable,
    sha256_of,
    stale_partials,
    write_manifest,
)
from flows.maintenance.guard import verified_target, writable_target
from flows.maintenance.pg import (
    Target,
    connect,
    database_exists,
    ident,
    run_tool,
    terminate_connections,
    tool_failure,
)
from flows.maintenance.record import finish, recorded
from flows.maintenance.retry import transient_retries
from flows.maintenance.settings import MaintenanceSettings, load_settings

COMPRESSION = 6
_COUNT_TABLES = """
    SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%%' AND NOT c.relispartition
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
    ORDER BY 1, 2
"""


def count_rows(conn: psycopg.Connection) -> dict[str, int]:
    """Exact row count of every user table (extension-owned tables excluded)."""
    counts = {}
    for schema, table in conn.execute(_COUNT_TABLES).fetchall():
        query = sql.SQL("SELECT count(*) FROM {}").format(ident(schema, table))
        counts[f"{schema}.{table}"] = conn.execute(query).fetchone()[0]
    return counts


def scratch_name(database: str, purpose: str) -> str:
    """A new database name derived from `database`, within PostgreSQL's 63 bytes."""
    return f"{database[:40]}_{purpose}_{uuid.uuid4().hex[:8]}"


def _pg_dump_version() -> str:
    done = run_tool(Target((("dbname", "postgres"),)), ["pg_dump", "--version"], timeout=30)
    return done.stdout.strip()


@task(name="pg-dump", cache_policy=NO_CACHE, persist_result=False, **transient_retries())
def dump_database(target: Target, root: str, label: str) -> Manifest:
    """pg_dump of one snapshot, its row counts, checksum and manifest; returns the manifest."""
    folder = database_dir(Path(root), target.dbname)
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in stale_partials(folder):
        leftover.unlink(missing_ok=True)
    started = time.monotonic()
    created = datetime.now(UTC)
    backup_id = new_backup_id(target.dbname, created)
    final = folder / f"{backup_id}.dump"
    partial = folder / f"{backup_id}.dump.partial"
    try:
        with connect(target) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            tables = count_rows(conn)
            server_version = conn.info.server_version
            # The snapshot lives as long as this transaction: keep it open while pg_dump runs.
            done = run_tool(
                target,
                [
                    "pg_dump",
                    "--format=custom",
                    f"--compress={COMPRESSION}",
                    f"--snapshot={snapshot}",
                    f"--file={partial}",
                    f"--dbname={target.conninfo(with_password=False)}",
                ],
            )
            if done.returncode != 0:
                raise tool_failure("pg_dump", done, target)
        checksum = sha256_of(partial)
        partial.replace(final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    manifest = Manifest(
        id=backup_id,
        database=target.dbname,
        server=str(target).rsplit("/", 1)[0],
        label=label,
        created_at=created,
        file=final.name,
        compression=COMPRESSION,
        size=final.stat().st_size,
        sha256=checksum,
        duration=round(time.monotonic() - started, 3),
        pg_dump_version=_pg_dump_version(),
        server_version=server_version,
        tables=tables,
    )
    write_manifest(folder, manifest)
    return manifest


def check_checksum(manifest: Manifest, path: Path) -> None:
    if not path.is_file():
        raise ValidationError(f"backup {manifest.id}: {path} is missing")
    actual = sha256_of(path)
    if actual != manifest.sha256:
        raise OpsflowError(
            f"backup {manifest.id}: checksum mismatch (file {actual[:12]}…, manifest {manifest.sha256[:12]}…) "
            "— the file changed or is truncated"
        )


def restore_into(admin: Target, dbname: str, path: Path, manifest: Manifest) -> dict[str, int]:
    """Create `dbname`, pg_restore the backup into it, and check its row counts."""
    with connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(ident(dbname)))
    fresh = admin.with_database(dbname)
    done = run_tool(
        fresh,
        ["pg_restore", "--exit-on-error", f"--dbname={fresh.conninfo(with_password=False)}", str(path)],
    )
    if done.returncode != 0:
        raise tool_failure("pg_restore", done, fresh)
    with connect(fresh) as conn:
        counts = count_rows(conn)
    if counts != manifest.tables:
        differ = sorted(
            name
            for name in set(counts) | set(manifest.tables)
            if counts.get(name) != manifest.tables.get(name)
        )
        raise OpsflowError(
            f"backup {manifest.id}: restored row counts differ from the manifest in {', '.join(differ[:5])}"
        )
    return counts


def drop_database(admin: Target, dbname: str) -> None:
    with connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident(dbname)))


def _sha_key(_context: Any, parameters: dict[str, Any]) -> str:
    return f"opsflow-backup-restorable-{parameters['sha256']}"


@task(name="prove-restorable", cache_key_fn=_sha_key, persist_result=True, **transient_retries())
def prove_restorable(sha256: str, path: str, manifest: Manifest, admin: Target) -> dict[str, Any]:
    """Restore the backup into a scratch database, compare row counts, drop it. Cached by checksum."""
    scratch = scratch_name(manifest.database, "verify")
    try:
        counts = restore_into(admin, scratch, Path(path), manifest)
    finally:
        drop_database(admin, scratch)
    return {"sha256": sha256, "tables": len(counts), "rows": sum(counts.values()), "at": datetime.now(UTC)}


def _target(settings: MaintenanceSettings) -> Target:
    return Target.from_url(settings.require_database())


def admin_of(target: Target) -> Target:
    return target.with_database("postgres")


@flow(name="db-backup-create")
def backup_create(
    label: str = "manual", environment: str | None = None, database_url: SecretStr | None = None
) -> dict[str, Any]:
    """Back up the target database: pg_dump custom format, checksum, manifest with row counts."""
    settings = load_settings(environment, database_url=database_url)
    target = _target(settings)
    params = {"label": label, "database": str(target), "backup_dir": str(settings.backups())}
    with recorded("db-backup-create", params, settings) as outcome:
        manifest = dump_database(target, str(settings.backups()), label)
        outcome.rows, outcome.bytes = manifest.rows, manifest.size
        outcome.details = manifest.model_dump(mode="json") | {
            "path": str(settings.backups() / manifest.database / manifest.file)
        }
        outcome.message = (
            f"backup {manifest.id}: {len(manifest.tables)} tables, {manifest.rows} rows, "
            f"{manifest.size} bytes in {manifest.duration:.1f}s"
        )
    return finish(outcome)


@flow(name="db-backup-verify")
def backup_verify(
    backup: str = "latest",
    within: str | None = None,
    no_cache: bool = False,
    environment: str | None = None,
    database_url: SecretStr | None = None,
) -> dict[str, Any]:
    """Prove a backup (default the newest) by checksum and a restore into a scratch database;
    with `within` (e.g. 24h) fail unless that backup is also recent enough."""
    settings = load_settings(environment, database_url=database_url)
    target = _target(settings)
    params = {"backup": backup, "within": within, "no_cache": no_cache, "database": str(target)}
    with recorded("db-backup-verify", params, settings) as outcome:
        window = parse_duration(within, what="--within") if within else None
        root = settings.backups()
        if backup == "latest" and not list_backups(root, target.dbname):
            outcome.fail(f"no backup of {target.dbname} in {root}")
            return finish(outcome)
        manifest, path = find_backup(root, backup, target.dbname)
        outcome.details = {"id": manifest.id, "created_at": manifest.created_at.isoformat()}
        if window is not None and manifest.age() > window:
            outcome.fail(
                f"newest backup {manifest.id} is {manifest.age().total_seconds() / 3600:.1f}h old, "
                f"older than {within}"
            )
            return finish(outcome)
        check_checksum(manifest, path)
        prover = prove_restorable.with_options(refresh_cache=True) if no_cache else prove_restorable
        state = prover(manifest.sha256, str(path), manifest, admin_of(target), return_state=True)
        proof = state.result()
        cached = state.name == "Cached"
        manifest.verified_at = datetime.now(UTC)
        manifest.verification = "restored" + (" (cached proof)" if cached else "")
        write_manifest(path.parent, manifest)
        outcome.rows = proof["rows"]
        outcome.details |= {"cached": cached, "restored_rows": proof["rows"], "tables": proof["tables"]}
        outcome.message = f"backup {manifest.id} is valid: checksum ok, " + (
            "restore proven earlier for this checksum"
            if cached
            else f"restored {proof['tables']} tables / {proof['rows']} rows into a scratch database"
        )
    return finish(outcome)


@flow(name="db-backup-restore")
def backup_restore(
    backup: str = "latest",
    into: str | None = None,
    keep_replaced: bool = True,
    dry_run: bool = False,
    environment: str | None = None,
    database_url: SecretStr | None = None,
) -> dict[str, Any]:
    """Restore a backup: into a new database `into`, or (default) in place of the target database
    by restoring beside it and swapping names; the replaced database is kept unless asked."""
    settings = load_settings(environment, database_url=database_url)
    target = writable_target(settings, "db backup restore")
    params = {"backup": backup, "into": into, "keep_replaced": keep_replaced, "dry_run": dry_run}
    with recorded("db-backup-restore", params | {"database": str(target)}, settings) as outcome:
        target = verified_target(target, settings, "db backup restore")
        manifest, path = find_backup(settings.backups(), backup, target.dbname)
        check_checksum(manifest, path)
        destination = into or target.dbname
        outcome.details = {"id": manifest.id, "destination": destination}
        if dry_run:
            outcome.exit_code = EXIT_DRY_RUN
            outcome.message = (
                f"dry run: would restore {manifest.id} ({manifest.rows} rows) into {destination}"
            )
            return finish(outcome)
        result = restore_database(target, manifest, path, into=into, keep_replaced=keep_replaced)
        outcome.rows = manifest.rows
        outcome.details |= result
        outcome.message = f"restored {manifest.id} into {destination}" + (
            f"; the replaced database is kept as {result['replaced']}" if result.get("replaced") else ""
        )
    return finish(outcome)


@task(name="restore-database", cache_policy=NO_CACHE, persist_result=False)
def restore_database(
    target: Target, manifest: Manifest, path: Path, *, into: str | None = None, keep_replaced: bool = True
) -> dict[str, Any]:
    """Restore beside the target, then swap it in; the target is untouched until the swap."""
    admin = admin_of(target)
    if into:
        with connect(admin) as conn:
            if database_exists(conn, into):
                raise ValidationError(f"database {into} already exists — restore into a new name")
        restore_into(admin, into, path, manifest)
        return {"replaced": None}
    fresh = scratch_name(target.dbname, "restoring")
    try:
        restore_into(admin, fresh, path, manifest)
    except BaseException:
        drop_database(admin, fresh)
        raise
    replaced = swap_in(admin, target.dbname, fresh)
    if not keep_replaced and replaced:
        drop_database(admin, replaced)
        replaced = None
    return {"replaced": replaced}


def swap_in(admin: Target, name: str, fresh: str) -> str | None:
    """Make database `fresh` become `name` (owner, settings and grants carried over); the old
    one is renamed aside and its name returned (None when there was none)."""
    aside = f"{name[:40]}_pre_restore_{datetime.now(UTC).strftime('%Y%m%dt%H%M%S')}"
    with connect(admin, autocommit=True) as conn:
        old = conn.execute(
            "SELECT oid, pg_get_userbyid(datdba), datacl::text[] FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if old is None:
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(fresh), ident(name)))
            return None
        oid, owner, acl = old
        settings = conn.execute(
            "SELECT unnest(setconfig) FROM pg_db_role_setting WHERE setdatabase = %s AND setrole = 0", (oid,)
        ).fetchall()
        # No session may be connected while a database is renamed; retry briefly for stragglers.
        for attempt in range(5):
            terminate_connections(conn, name)
            try:
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(name), ident(aside)))
                break
            except psycopg.errors.ObjectInUse:
                if attempt == 4:
                    raise
                time.sleep(0.2)
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(fresh), ident(name)))
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident(name), ident(owner)))
        for setting in settings:
            key, _, value = setting[0].partition("=")
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET {} TO {}").format(ident(name), ident(key), sql.Literal(value))
            )
        for statement in grant_statements(name, acl):
            conn.execute(statement)
    return aside


_DATABASE_PRIVILEGES = {"C": "CREATE", "T": "TEMPORARY", "c": "CONNECT"}


def grant_statements(database: str, acl: list[str] | None) -> list[sql.Composed]:
    """GRANT/REVOKE statements that give `database` the access list `acl` (aclitem texts)."""
    if acl is None:
        return []
    statements = [sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident(database))]
    for item in acl:
        grantee, _, rest = item.partition("=")
        privileges = [_DATABASE_PRIVILEGES[c] for c in rest.split("/")[0] if c in _DATABASE_PRIVILEGES]
        if not privileges:
            continue
        who = sql.SQL("PUBLIC") if grantee == "" else ident(grantee.strip('"'))
        statements.append(
            sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in privileges), ident(database), who
            )
        )
    return statements


@flow(name="db-backup-prune")
def backup_prune(
    keep_last: int = 7,
    older_than: str | None = "30d",
    dry_run: bool = False,
    environment: str | None = None,
    database_url: SecretStr | None = None,
) -> dict[str, Any]:
    """Remove backups beyond the newest `keep_last` that are also older than `older_than`."""
    settings = load_settings(environment, database_url=database_url)
    target = _target(settings)
    params = {"keep_last": keep_last, "older_than": older_than, "dry_run": dry_run, "database": str(target)}
    with recorded("db-backup-prune", params, settings) as outcome:
        age = parse_duration(older_than, what="--older-than") if older_than else None
        root = settings.backups()
        doomed = select_prunable(list_backups(root, target.dbname), keep_last=keep_last, older_than=age)
        freed = sum(m.size for m in doomed)
        outcome.details = {"removed": [m.id for m in doomed], "dry_run": dry_run}
        outcome.bytes = freed
        if dry_run:
            outcome.exit_code = EXIT_DRY_RUN
            outcome.message = f"dry run: would remove {len(doomed)} backup(s), {freed} bytes"
            return finish(outcome)
        folder = database_dir(root, target.dbname)
        for manifest in doomed:
            # Manifest first: a half-pruned backup is then simply not listed.
            (folder / f"{manifest.id}.json").unlink(missing_ok=True)
            with contextlib.suppress(FileNotFoundError):
                (folder / manifest.file).unlink()
        outcome.rows = len(doomed)
        outcome.message = f"removed {len(doomed)} backup(s), {freed} bytes" if doomed else "nothing to prune"
    return finish(
        outcome, table=[{"removed": m.id, "created_at": m.created_at.isoformat()} for m in doomed] or None
    )
