"""`db audit enable|status` (seed 004's audit trigger) and `db slow-queries` (pg_stat_statements).

Audit: `audit_log` records every INSERT, UPDATE and DELETE of an audited table, with the row
before (`old_values`) and after (`new_values`) as JSON and the application user from the session
setting `app.user_id` (`SET app.user_id = '7'`; unset or empty is NULL). `user_id` is a plain
INTEGER without a foreign key to `users`: the application may have no such table, and an audit
entry must outlive the user it names. The log lives in one schema (`--audit-schema`, default
public) and the trigger function names it fully, so a session's search_path cannot send entries
elsewhere. The function runs with the rights of whoever changes the audited table: application
roles need INSERT on audit_log and USAGE on its sequence. `table_name` is the table's name
without its schema, as in seed 004. Enabling is idempotent: every object is compared with what it
should be and only what is missing or different is (re)created, so a second run changes nothing.

Slow queries: a report of `pg_stat_statements`, which only works when the library is preloaded
at server start AND the extension is created in the database; otherwise exit 2 with how to do
both. Reading other roles' statement texts needs `pg_read_all_stats`.
"""

from __future__ import annotations

from typing import Any

import psycopg
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import SecretStr

from flows.console import Console
from flows.errors import EXIT_DRY_RUN, DependencyError, ValidationError
from flows.maintenance.guard import verified_target, writable_target
from flows.maintenance.housekeeping import Table, find_tables_in, format_table, open_target, split_names
from flows.maintenance.pg import Target, ident
from flows.maintenance.record import finish, recorded
from flows.maintenance.retry import transient_retries
from flows.maintenance.settings import MaintenanceSettings, load_settings

AUDIT_LOG_COLUMNS = ("id", "table_name", "operation", "user_id", "old_values", "new_values", "created_at")
# pg_trigger.tgtype of AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW: ROW 1 | INSERT 4 | DELETE 8 | UPDATE 16.
AUDIT_TGTYPE = 1 | 4 | 8 | 16
MAX_IDENTIFIER_BYTES = 63

# The body of seed 004's audit_trigger(); {audit_log} becomes the quoted, schema-qualified table.
# OLD is NULL on INSERT and NEW on DELETE; an AFTER trigger's result is ignored, but DELETE
# returns OLD (the row that exists), the others NEW, as seed 004 does.
AUDIT_FUNCTION_BODY = """
BEGIN
    INSERT INTO {audit_log} (table_name, operation, user_id, old_values, new_values)
    VALUES (
        TG_TABLE_NAME,
        TG_OP,
        NULLIF(current_setting('app.user_id', true), '')::INTEGER,
        CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN row_to_json(OLD) END,
        CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN row_to_json(NEW) END
    );
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END;
"""


# ---------------------------------------------------------------- audit: pure helpers


def trigger_name(table: str) -> str:
    """`<table>_audit`, shortened (by whole characters) to PostgreSQL's 63-byte identifier limit."""
    suffix = "_audit"
    name = table
    while len((name + suffix).encode()) > MAX_IDENTIFIER_BYTES:
        name = name[:-1]
    return name + suffix


def audit_log_ddl(schema: str) -> sql.Composed:
    """Seed 004's audit_log; `user_id` deliberately has no foreign key (see the module docstring)."""
    return sql.SQL(
        """CREATE TABLE IF NOT EXISTS {audit_log} (
    id BIGSERIAL PRIMARY KEY,
    table_name TEXT NOT NULL,
    operation TEXT NOT NULL,
    user_id INTEGER,
    old_values JSONB,
    new_values JSONB,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)"""
    ).format(audit_log=ident(schema, "audit_log"))


def function_body(schema: str) -> str:
    return sql.SQL(AUDIT_FUNCTION_BODY).format(audit_log=ident(schema, "audit_log")).as_string(None)


def function_ddl(schema: str) -> sql.Composed:
    return sql.SQL("CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS {body}").format(
        fn=ident(schema, "audit_trigger"), body=sql.Literal(function_body(schema))
    )


def trigger_ddl(table: Table, schema: str) -> sql.Composed:
    return sql.SQL(
        "CREATE OR REPLACE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {table}"
        " FOR EACH ROW EXECUTE FUNCTION {fn}()"
    ).format(
        trigger=sql.Identifier(trigger_name(table.name)), table=table.sql(), fn=ident(schema, "audit_trigger")
    )


def trigger_is_current(row: tuple[Any, ...] | None, function_oid: int | None) -> bool:
    """Whether an existing trigger (tgfoid, tgtype, tgenabled, plain) is the audit trigger, enabled."""
    if row is None or function_oid is None:
        return False
    tgfoid, tgtype, enabled, plain = row
    return tgfoid == function_oid and tgtype == AUDIT_TGTYPE and enabled != "D" and bool(plain)


# ---------------------------------------------------------------- audit: database


def audit_log_columns(conn: psycopg.Connection, schema: str) -> set[str] | None:
    """The columns of `schema.audit_log`, or None when there is no such table."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE n.nspname = %s AND c.relname = 'audit_log' AND c.relkind IN ('r', 'p')",
        (schema,),
    ).fetchall()
    return {r[0] for r in rows if r[0]} if rows else None


def audit_function(conn: psycopg.Connection, schema: str) -> tuple[int, str] | None:
    """(oid, source) of `schema.audit_trigger()`, or None."""
    row = conn.execute(
        "SELECT p.oid, p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = %s AND p.proname = 'audit_trigger' AND p.pronargs = 0",
        (schema,),
    ).fetchone()
    return (int(row[0]), row[1]) if row else None


def plan_audit_log(conn: psycopg.Connection, schema: str) -> list[str]:
    """What creating the audit log needs; an incompatible existing one is exit 2."""
    if not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone():
        raise ValidationError(f"schema {schema!r} does not exist: create it or give another --audit-schema")
    columns = audit_log_columns(conn, schema)
    if columns is None:
        return [f"create table {schema}.audit_log"]
    missing = [c for c in AUDIT_LOG_COLUMNS if c not in columns]
    if missing:
        raise DependencyError(
            f"{schema}.audit_log exists but has no column(s) {', '.join(missing)}: it is not seed 004's audit log"
        )
    return []


@task(name="ensure-audit-log", cache_policy=NO_CACHE, persist_result=False, **transient_retries())
def ensure_audit_log(target: Target, settings: MaintenanceSettings, schema: str) -> list[str]:
    """Create `schema.audit_log` when missing (used by purge too); the changes made."""
    with open_target(target, settings) as conn:
        changes = plan_audit_log(conn, schema)
        if changes:
            conn.execute(audit_log_ddl(schema))
    return changes


@task(name="enable-audit", cache_policy=NO_CACHE, persist_result=False, **transient_retries())
def enable_audit(
    target: Target, settings: MaintenanceSettings, names: list[str], schema: str, dry_run: bool
) -> tuple[list[str], list[dict[str, Any]]]:
    """In one transaction: audit_log, audit_trigger() and each table's trigger, where missing or
    different. Returns the changes and, per table, whether it was already audited."""
    with open_target(target, settings) as conn:
        if conn.info.server_version < 140000:
            raise DependencyError("audit triggers need PostgreSQL 14 or later (CREATE OR REPLACE TRIGGER)")
        tables = find_tables_in(conn, names)
        for table in tables:
            if table.kind == "m":
                raise ValidationError(f"{table.qualified} is a materialized view: it cannot have triggers")
            if table.schema == schema and table.name == "audit_log":
                raise ValidationError(
                    f"{table.qualified} is the audit log itself: auditing it would never end"
                )
        changes = plan_audit_log(conn, schema)
        if changes and not dry_run:
            conn.execute(audit_log_ddl(schema))
        function = audit_function(conn, schema)
        body = function_body(schema)
        if function is None or function[1] != body:
            changes.append(f"{'create' if function is None else 'replace'} function {schema}.audit_trigger()")
            if not dry_run:
                conn.execute(function_ddl(schema))
                function = audit_function(conn, schema)
        per_table = []
        for table in tables:
            name = trigger_name(table.name)
            row = conn.execute(
                "SELECT tgfoid, tgtype, tgenabled, tgqual IS NULL AND cardinality(tgattr::int2[]) = 0"
                " FROM pg_trigger WHERE tgrelid = %s AND tgname = %s",
                (table.oid, name),
            ).fetchone()
            current = trigger_is_current(row, function[0] if function else None)
            if not current:
                changes.append(
                    f"{'create' if row is None else 'replace'} trigger {name} on {table.qualified}"
                )
                if not dry_run:
                    conn.execute(trigger_ddl(table, schema))
            per_table.append({"table": table.qualified, "trigger": name, "already audited": current})
        if dry_run:
            conn.rollback()
    return changes, per_table


@task(name="audit-status", cache_policy=NO_CACHE, persist_result=False, **transient_retries())
def read_audit_status(
    target: Target, settings: MaintenanceSettings, schema: str
) -> tuple[bool, bool, list[dict[str, Any]]]:
    with open_target(target, settings, autocommit=True) as conn:
        has_log = audit_log_columns(conn, schema) is not None
        function = audit_function(conn, schema)
        rows = []
        if function is not None:
            rows = [
                {"table": f"{s}.{t}", "trigger": g, "enabled": bool(e)}
                for s, t, g, e in conn.execute(
                    "SELECT n.nspname, c.relname, t.tgname, t.tgenabled <> 'D' FROM pg_trigger t"
                    " JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE t.tgfoid = %s AND t.tgparentid = 0 ORDER BY n.nspname, c.relname, t.tgname",
                    (function[0],),
                ).fetchall()
            ]
    return has_log, function is not None, rows


@flow(name="db-audit-enable", log_prints=True)
def enable_audit_trail(
    tables: list[str],
    audit_schema: str = "public",
    dry_run: bool = False,
    environment: str | None = None,
    database_url: SecretStr | None = None,
) -> dict[str, Any]:
    """Install seed 004's audit trigger on `tables` (audit_log and audit_trigger() with it);
    idempotent: a second run changes nothing and says so. Unknown tables: exit 3."""
    settings = load_settings(environment, database_url=database_url)
    target = writable_target(settings, "db audit enable")
    names = split_names(tables)
    params = {"dry_run": dry_run, "database": str(target), "tables": names, "audit_schema": audit_schema}
    with recorded("db-audit-enable", params, settings) as outcome:
        target = verified_target(target, settings, "db audit enable")
        if not names:
            raise ValidationError("name at least one table to audit")
        changes, per_table = enable_audit(target, settings, names, audit_schema, dry_run)
        outcome.rows = 0 if dry_run else len(changes)
        outcome.details = {
            "database": str(target),
            "dry_run": dry_run,
            "changes": changes,
            "tables": per_table,
        }
        listed = ", ".join(t["table"] for t in per_table)
        if dry_run:
            outcome.exit_code = EXIT_DRY_RUN
            outcome.message = (
                f"dry run: {len(changes)} change(s) would audit {listed}: " + "; ".join(changes)
                if changes
                else f"dry run: {listed} already audited; nothing would change"
            )
        elif changes:
            outcome.message = f"auditing {listed} in {target}: " + "; ".join(changes)
        else:
            outcome.message = f"{listed} already audited in {target}; nothing changed"
    return finish(outcome, table=[{"change": c} for c in changes] or None)


@flow(name="db-audit-status", log_prints=True)
def audit_status(
    audit_schema: str = "public", environment: str | None = None, database_url: SecretStr | None = None
) -> dict[str, Any]:
    """Which tables have the audit trigger (and whether it is enabled)."""
    settings = load_settings(environment, database_url=database_url)
    target = Target.from_url(settings.require_database())
    params = {"database": str(target), "audit_schema": audit_schema}
    with recorded("db-audit-status", params, settings) as outcome:
        has_log, has_function, rows = read_audit_status(target, settings, audit_schema)
        outcome.rows = len(rows)
        outcome.details = {
            "database": str(target),
            "audit_log": has_log,
            "function": has_function,
            "tables": rows,
        }
        if not has_log and not has_function:
            outcome.message = f"no audit trail in {target} ({audit_schema}.audit_log does not exist)"
        else:
            disabled = [r["table"] for r in rows if not r["enabled"]]
            outcome.message = f"{len(rows)} audited table(s) in {target}" + (
                f"; trigger disabled on {', '.join(disabled)}" if disabled else ""
            )
    return finish(outcome, table=rows or None)


def render_audit_status(console: Console, outcome: dict[str, Any]) -> None:
    console.out(outcome.get("message") or "")
    rows = outcome.get("details", {}).get("tables") or []
    if rows:
        for line in format_table(
            [{**r, "enabled": "yes" if r["enabled"] else "NO"} for r in rows], ["table", "trigger", "enabled"]
        ):
            console.out(line)


# ---------------------------------------------------------------- slow queries

SLOW_QUERY_ORDER = {
    "total": "total_exec_time",
    "mean": "mean_exec_time",
    "max": "max_exec_time",
    "calls": "calls",
}
_PRE13_NAMES = {"total_exec_time": "total_time", "mean_exec_time": "mean_time", "max_exec_time": "max_time"}


def preloaded(shared_preload_libraries: str) -> bool:
    """Whether `shared_preload_libraries` (a comma-separated, maybe quoted list) has pg_stat_statements."""
    names = [n.strip().strip('"').strip() for n in shared_preload_libraries.split(",")]
    return "pg_stat_statements" in names


def enable_instructions(database: str, *, available: bool, is_preloaded: bool) -> str:
    """One line saying exactly what is missing for pg_stat_statements and how to add it."""
    steps = []
    if not available:
        steps.append("install the PostgreSQL contrib package (e.g. postgresql-contrib) on the server")
    if not is_preloaded:
        steps.append(
            "add pg_stat_statements to shared_preload_libraries in postgresql.conf"
            " (shared_preload_libraries = 'pg_stat_statements', keeping any libraries already listed;"
            " or ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements')"
        )
        steps.append("restart PostgreSQL")
    steps.append(f"run CREATE EXTENSION IF NOT EXISTS pg_stat_statements in database {database}")
    reason = "is not preloaded" if not is_preloaded else "is not created in this database"
    if not available:
        reason = "is not installed"
    return f"pg_stat_statements {reason}: " + "; then ".join(steps)


def slow_queries_sql(schema: str, server_version: int, by: str = "total") -> sql.Composed:
    """The report query for pg_stat_statements in `schema`: this database's statements, slowest
    first by `by` (total, mean, max time or calls), LIMIT %(limit)s. Times in milliseconds."""
    if by not in SLOW_QUERY_ORDER:
        raise ValidationError(f"--by {by!r}: give one of {', '.join(SLOW_QUERY_ORDER)}")

    def col(name: str) -> sql.Identifier:
        return sql.Identifier(_PRE13_NAMES.get(name, name) if server_version < 130000 else name)

    return sql.SQL(
        """SELECT s.queryid, s.calls, {total} AS total_ms, {mean} AS mean_ms, {max} AS max_ms, s.rows,
       s.shared_blks_hit, s.shared_blks_read, s.query
FROM {view} s
WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY {order} DESC NULLS LAST
LIMIT %(limit)s"""
    ).format(
        total=sql.SQL("s.") + col("total_exec_time"),
        mean=sql.SQL("s.") + col("mean_exec_time"),
        max=sql.SQL("s.") + col("max_exec_time"),
        view=ident(schema, "pg_stat_statements"),
        order=sql.SQL("s.") + col(SLOW_QUERY_ORDER[by]),
    )


SLOW_QUERY_COLUMNS = (
    "queryid",
    "calls",
    "total_ms",
    "mean_ms",
    "max_ms",
    "rows",
    "shared_blks_hit",
    "shared_blks_read",
    "query",
)


def slow_query_rows(raw: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Rows of `slow_queries_sql` as JSON-friendly dicts, with a rank and the cache hit ratio."""
    rows = []
    for rank, values in enumerate(raw, 1):
        row = dict(zip(SLOW_QUERY_COLUMNS, values, strict=True))
        hit, read = row["shared_blks_hit"] or 0, row["shared_blks_read"] or 0
        rows.append(
            {
                "rank": rank,
                "queryid": None if row["queryid"] is None else str(row["queryid"]),
                "calls": int(row["calls"] or 0),
                "total_ms": round(float(row["total_ms"] or 0), 3),
                "mean_ms": round(float(row["mean_ms"] or 0), 3),
                "max_ms": round(float(row["max_ms"] or 0), 3),
                "rows": int(row["rows"] or 0),
                "hit_percent": round(100.0 * hit / (hit + read), 1) if hit + read else None,
                "query": row["query"],
            }
        )
    return rows


def one_line(text: str | None, width: int = 80) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def render_slow_query_lines(rows: list[dict[str, Any]], width: int = 80) -> list[str]:
    """The report as text: one aligned line per statement, its text on one line, shortened."""
    if not rows:
        return ["no statements recorded yet for this database"]
    shown = [
        {
            "#": r["rank"],
            "calls": r["calls"],
            "total ms": r["total_ms"],
            "mean ms": r["mean_ms"],
            "max ms": r["max_ms"],
            "rows": r["rows"],
            "hit %": r["hit_percent"],
            "query": one_line(r["query"], width),
        }
        for r in rows
    ]
    return format_table(shown, ["#", "calls", "total ms", "mean ms", "max ms", "rows", "hit %", "query"])


@task(name="read-slow-queries", cache_policy=NO_CACHE, persist_result=False, **transient_retries())
def read_slow_queries(
    target: Target, settings: MaintenanceSettings, limit: int, by: str
) -> list[dict[str, Any]]:
    with open_target(target, settings, autocommit=True) as conn:
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'"
        ).fetchone()
        libraries = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0]
        schema = conn.execute(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'pg_stat_statements'"
        ).fetchone()
        is_preloaded = preloaded(libraries or "")
        if not (available and is_preloaded and schema):
            raise DependencyError(
                enable_instructions(target.dbname, available=bool(available), is_preloaded=is_preloaded)
            )
        raw = conn.execute(
            slow_queries_sql(schema[0], conn.info.server_version, by), {"limit": limit}
        ).fetchall()
    return slow_query_rows(raw)


@flow(name="db-slow-queries", log_prints=True)
def slow_queries(
    limit: int = 20,
    by: str = "total",
    environment: str | None = None,
    database_url: SecretStr | None = None,
) -> dict[str, Any]:
    """The `limit` slowest statements of the target database from pg_stat_statements (by total,
    mean or max time, or calls). Without the extension preloaded and created: exit 2 and how."""
    settings = load_settings(environment, database_url=database_url)
    target = Target.from_url(settings.require_database())
    params = {"database": str(target), "limit": limit, "by": by}
    with recorded("db-slow-queries", params, settings) as outcome:
        if limit < 1:
            raise ValidationError(f"--limit {limit}: give at least 1")
        if by not in SLOW_QUERY_ORDER:
            raise ValidationError(f"--by {by!r}: give one of {', '.join(SLOW_QUERY_ORDER)}")
        rows = read_slow_queries(target, settings, limit, by)
        outcome.rows = len(rows)
        outcome.details = {"database": str(target), "by": by, "statements": rows}
        order = "calls" if by == "calls" else f"{by} time"
        outcome.message = f"{len(rows)} slowest statement(s) by {order} in {target}"
    return finish(outcome, table=[{**r, "query": one_line(r["query"], 200)} for r in rows] or None)


def render_slow_queries(console: Console, outcome: dict[str, Any]) -> None:
    console.out(outcome.get("message") or "")
    for line in render_slow_query_lines(outcome.get("details", {}).get("statements") or []):
        console.out(line)
