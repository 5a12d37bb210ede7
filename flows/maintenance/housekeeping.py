"""`db vacuum`, `db analyze`, `db purge`: routine PostgreSQL housekeeping (seeds 002-004).

Vacuum and analyze work on every user table, or on the tables named, one table at a time in
autocommit (VACUUM cannot run in a transaction, and one slow table holds no lock on the next),
and report per table how long it took, its dead tuples before and after (`pg_stat_all_tables`)
and its size. "Every user table" means each top-level table: a partitioned table is processed
through its parent (which recurses into its partitions), so no partition is done twice.

Purge removes seed 004's soft-deleted rows (`deleted_at` set longer ago than N days) in batches,
each batch one short statement of its own (`DELETE ... WHERE ctid = ANY(ARRAY(SELECT ctid ...
LIMIT n FOR UPDATE SKIP LOCKED))`): no long lock, rows other sessions hold are left for the next
run. The same statement writes one `audit_log` entry per batch (operation 'PURGE', `old_values`
a JSON array of the removed rows), so a batch and its record commit together and the rows can
be put back::

    INSERT INTO t SELECT * FROM jsonb_populate_recordset(NULL::t, (SELECT old_values FROM audit_log WHERE id = …));

A partitioned table is purged partition by partition (a ctid is only unique inside one).
Rows removed through `ON DELETE CASCADE` from other tables are not in the purge entry (an audit
trigger on those tables records them). Names are always quoted with `psycopg.sql`; values are
always parameters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import SecretStr

from flows.console import Console
from flows.errors import EXIT_DRY_RUN, EXIT_FAILURE, EXIT_PERMISSION, OpsflowError, ValidationError
from flows.maintenance.ages import parse_age
from flows.maintenance.guard import verified_target, writable_target
from flows.maintenance.pg import Target, connect, ident, scrub, translate
from flows.maintenance.record import finish, recorded
from flows.maintenance.retry import transient_retries
from flows.maintenance.settings import MaintenanceSettings, load_settings

TABLE_KINDS = {"r": "table", "p": "partitioned table", "m": "materialized view"}
OTHER_KINDS = {
    "v": "a view",
    "S": "a sequence",
    "i": "an index",
    "I": "an index",
    "f": "a foreign table",
    "c": "a composite type",
    "t": "a TOAST table",
}
# Schemas whose tables are never "user tables" (an explicit schema-qualified name may still name one).
_USER_SCHEMAS = sql.SQL(
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'"
)
_ALL_TABLES = sql.SQL(
    "SELECT n.nspname, c.relname, c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'm', 'p') AND NOT c.relispartition AND c.relpersistence <> 't' AND {user_schemas}"
    ' ORDER BY n.nspname COLLATE "C", c.relname COLLATE "C"'
).format(user_schemas=_USER_SCHEMAS)
_NAMED_TABLE = sql.SQL(
    "SELECT n.nspname, c.relname, c.oid, c.relkind, pg_table_is_visible(c.oid) FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = %(name)s"
    " AND (n.nspname = %(schema)s OR %(schema)s::text IS NULL AND {user_schemas})"
    " ORDER BY pg_table_is_visible(c.oid) DESC, n.nspname"
).format(user_schemas=_USER_SCHEMAS)


# ---------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class Table:
    """One table of the target database, as found in its catalog."""

    schema: str
    name: str
    oid: int
    kind: str = "r"

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def sql(self) -> sql.Composed:
        return ident(self.schema, self.name)


def parse_table_name(text: str) -> tuple[str | None, str]:
    """`[schema.]table` as PostgreSQL reads it: unquoted parts fold to lower case, "quoted" parts
    are taken as they are (and may contain dots)."""
    parts: list[str] = []
    i, text = 0, text.strip()
    while True:
        if i < len(text) and text[i] == '"':
            j, part = i + 1, ""
            while True:
                end = text.find('"', j)
                if end < 0:
                    raise ValidationError(f"table name {text!r} has an unclosed quote")
                part += text[j:end]
                if text[end + 1 : end + 2] == '"':  # "" inside quotes is one "
                    part, j = part + '"', end + 2
                    continue
                i = end + 1
                break
        else:
            end = text.find(".", i)
            end = len(text) if end < 0 else end
            part = text[i:end].strip().lower()
            i = end
        if not part:
            raise ValidationError(f"table name {text!r} is not [schema.]table")
        parts.append(part)
        if i >= len(text):
            break
        if text[i] != ".":
            raise ValidationError(f"table name {text!r} is not [schema.]table")
        i += 1
    if len(parts) > 2:
        raise ValidationError(f"table name {text!r} is not [schema.]table")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def split_names(values: list[str] | None) -> list[str]:
    """Table names given as repeated options and/or comma-separated lists, in order, once each."""
    names: list[str] = []
    for value in values or []:
        for name in value.split(","):
            if name.strip() and name.strip() not in names:
                names.append(name.strip())
    return names


def human_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    """Rows as aligned text lines under a header; numbers right-aligned, None shown as '-'."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(row.get(c), int | float) or row.get(c) is None for row in rows) and bool(rows)
        for c in columns
    ]

    def line(values: list[str]) -> str:
        out = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(out).rstrip()

    return [line(columns), *(line(r) for r in cells)]


def table_report(result: dict[str, Any]) -> dict[str, Any]:
    """One table's result as printed: sizes readable."""
    return {
        "table": result["table"],
        "status": result["status"],
        "seconds": result.get("seconds"),
        "dead before": result.get("dead_before"),
        "dead after": result.get("dead_after"),
        "size": human_bytes(result.get("size_after", result.get("size_before"))),
    }


def summarize_maintenance(verb: str, target: str, results: list[dict[str, Any]]) -> tuple[int, str]:
    """Exit code and message of a vacuum/analyze run from its per-table results."""
    done = [r for r in results if r["status"] == "ok"]
    failed = [r for r in results if r["status"] == "failed"]
    skipped = [r for r in results if r["status"] == "skipped"]
    past = {"vacuum": "vacuumed", "analyze": "analyzed"}[verb]
    if not results:
        return 0, f"no user tables in {target}; nothing to {verb}"
    removed = sum(
        max(0, (r.get("dead_before") or 0) - (r.get("dead_after") or 0)) for r in done if verb == "vacuum"
    )
    seconds = sum(r.get("seconds") or 0 for r in done)
    text = f"{past} {len(done)} of {len(results)} table(s) in {target} in {seconds:.2f}s"
    if verb == "vacuum":
        text += f"; {removed} dead tuple(s) removed"
    if failed:
        text += "; failed: " + "; ".join(f"{r['table']} ({r['error']})" for r in failed)
    if skipped:
        text += "; skipped (not the owner): " + ", ".join(r["table"] for r in skipped)
    code = EXIT_FAILURE if failed else EXIT_PERMISSION if skipped else 0
    return code, text


def purge_statement(table: Table, column: str, audit_log: sql.Composable) -> sql.Composed:
    """One purge batch: delete up to %(limit)s rows soft-deleted before %(cutoff)s that no one
    else holds, and record them in one audit entry, in a single statement (one transaction).
    Returns (rows removed, audit entry id or NULL)."""
    return sql.SQL(
        """WITH doomed AS (
    DELETE FROM {table} WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM {table} WHERE {column} < %(cutoff)s
        LIMIT %(limit)s FOR UPDATE SKIP LOCKED))
    RETURNING *
), logged AS (
    INSERT INTO {audit_log} (table_name, operation, user_id, old_values)
    SELECT %(table_name)s, 'PURGE', NULLIF(current_setting('app.user_id', true), '')::INTEGER,
           json_agg(row_to_json(doomed))
    FROM doomed HAVING count(*) > 0
    RETURNING id
)
SELECT (SELECT count(*) FROM doomed), (SELECT id FROM logged)"""
    ).format(table=table.sql(), column=sql.Identifier(column), audit_log=audit_log)


# ---------------------------------------------------------------- database access


def open_target(target: Target, settings: MaintenanceSettings, *, autocommit: bool = False) -> Any:
    """A connection with the settings' connect, statement and lock timeouts."""
    return connect(
        target, autocommit=autocommit, connect_timeout=settings.connect_timeout_seconds, settings=settings
    )


def sql_failure(exc: psycopg.Error, target: Target, doing: str) -> OpsflowError:
    """An SQL error as one opsflow line (connection/permission errors keep their own kind)."""
    failure = translate(exc, target, action=doing)
    if failure is not None:
        return failure
    return OpsflowError(f"{doing} failed: {short_error(exc, target)}")


def short_error(exc: BaseException, target: Target | None = None) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if getattr(exc, "sqlstate", None) == "57014":
        text += " (raise OPSFLOW_STATEMENT_TIMEOUT_SECONDS if the table needs longer)"
    return scrub(text, target) if target else text


def find_tables_in(conn: psycopg.Connection, requested: list[str]) -> list[Table]:
    """The tables named (or, when none are, every top-level user table), from the catalog.

    Unqualified names are looked up in the search path first, then in every user schema; a
    name found in several schemas but not the search path must be qualified. Unknown names and
    relations that are not tables are one configuration error (exit 3) naming them all.
    """
    if not requested:
        rows = conn.execute(_ALL_TABLES).fetchall()
        return [Table(s, n, int(o), k) for s, n, o, k in rows]
    found: list[Table] = []
    problems: list[str] = []
    for name in requested:
        schema, relname = parse_table_name(name)
        rows = conn.execute(_NAMED_TABLE, {"name": relname, "schema": schema}).fetchall()
        if not rows:
            problems.append(f"no table {name!r}")
            continue
        if len(rows) > 1 and not rows[0][4]:
            schemas = ", ".join(r[0] for r in rows)
            problems.append(f"{name!r} is in several schemas ({schemas}): qualify it")
            continue
        s, n, oid, kind, _ = rows[0]
        if kind not in TABLE_KINDS:
            problems.append(f"{s}.{n} is {OTHER_KINDS.get(kind, 'not a table')}, not a table")
            continue
        table = Table(s, n, int(oid), kind)
        if table not in found:
            found.append(table)
    if problems:
        raise ValidationError("; ".join(problems) + f" (database {conn.info.dbname})")
    return found


_STATS = sql.SQL(
    """WITH leaves AS (
    SELECT relid FROM pg_partition_tree(%(oid)s::oid::regclass) WHERE isleaf
    UNION ALL SELECT %(oid)s::oid::regclass WHERE %(kind)s <> 'p'
)
SELECT sum(s.n_dead_tup)::bigint, sum(s.n_live_tup)::bigint,
       coalesce(sum(pg_total_relation_size(l.relid)), 0)::bigint
FROM leaves l LEFT JOIN pg_stat_all_tables s ON s.relid = l.relid"""
)


def table_stats(conn: psycopg.Connection, table: Table) -> dict[str, int | None]:
    """Dead and live tuples (summed over partitions) and total size with indexes and TOAST."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    dead, live, size = conn.execute(_STATS, {"oid": table.oid, "kind": table.kind}).fetchone()
    return {"dead": dead, "live": live, "size": size}


# ---------------------------------------------------------------- tasks


@task(name="find-tables", cache_policy=NO_CACHE, persist_result=False, **transient_retries())
def find_tables(target: Target, settings: MaintenanceSettings, requested: list[str]) -> list[Table]:
    with open_target(target, settings, autocommit=True) as conn:
        return find_tables_in(conn, requested)


@task(name="table-stats", cache_policy=NO_CACHE, persist_result=False, **transient_retries())
def current_stats(target: Target, settings: MaintenanceSettings, tables: list[Table]) -> list[dict[str, Any]]:
    with open_target(target, settings, autocommit=True) as conn:
        rows = []
        for table in tables:
            stats = table_stats(conn, table)
            rows.append({"table": table.qualified, "dead": stats["dead"], "size": stats["size"]})
        return rows


@task(name="maintain-table", cache_policy=NO_CACHE, persist_result=False, **transient_retries())
def maintain_table(target: Target, settings: MaintenanceSettings, table: Table, verb: str) -> dict[str, Any]:
    """VACUUM (ANALYZE) or ANALYZE one table in autocommit, with its statistics around it.

    PostgreSQL does not fail but warns "skipping ..." when we do not own the table: that is
    reported as `skipped`, not as done."""
    statement = sql.SQL("VACUUM (ANALYZE) {}" if verb == "vacuum" else "ANALYZE {}").format(table.sql())
    skipped: list[str] = []

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        if (diag.message_primary or "").startswith("skipping"):
            skipped.append(diag.message_primary or "")

    with open_target(target, settings, autocommit=True) as conn:
        conn.add_notice_handler(on_notice)
        before = table_stats(conn, table)
        started = time.perf_counter()
        conn.execute(statement)
        seconds = round(time.perf_counter() - started, 3)
        after = table_stats(conn, table)
    return {
        "table": table.qualified,
        "status": "skipped" if skipped else "ok",
        "seconds": seconds,
        "dead_before": before["dead"],
        "dead_after": after["dead"],
        "live": after["live"],
        "size_before": before["size"],
        "size_after": after["size"],
        **({"error": skipped[0]} if skipped else {}),
    }


# ---------------------------------------------------------------- vacuum / analyze flows


def _maintain(
    verb: str,
    tables: list[str] | None,
    dry_run: bool,
    environment: str | None,
    database_url: SecretStr | None,
) -> dict[str, Any]:
    settings = load_settings(environment, database_url=database_url)
    target = Target.from_url(settings.require_database())
    requested = split_names(tables)
    params = {"dry_run": dry_run, "database": str(target), "tables": requested or ["(all)"]}
    with recorded(f"db-{verb}", params, settings) as outcome:
        found = find_tables(target, settings, requested)
        if dry_run:
            listed = current_stats(target, settings, found)
            outcome.exit_code, outcome.rows = EXIT_DRY_RUN, 0
            outcome.details = {"database": str(target), "dry_run": True, "tables": listed}
            outcome.message = f"dry run: would {verb} {len(found)} table(s) in {target}" + (
                ": " + ", ".join(t.qualified for t in found) if found else ""
            )
            return finish(outcome, table=[{**r, "size": human_bytes(r["size"])} for r in listed] or None)
        results = []
        for table in found:
            try:
                results.append(
                    maintain_table.with_options(task_run_name=f"{verb}-{table.qualified}")(
                        target, settings, table, verb
                    )
                )
            except psycopg.Error as exc:  # this table only (dropped meanwhile, timeout, lock): go on
                failure = translate(exc, target)
                if failure is not None:
                    raise failure from None
                results.append(
                    {"table": table.qualified, "status": "failed", "error": short_error(exc, target)}
                )
        code, message = summarize_maintenance(verb, str(target), results)
        outcome.exit_code, outcome.message = code, message
        outcome.rows = sum(1 for r in results if r["status"] == "ok")
        outcome.details = {"database": str(target), "dry_run": False, "tables": results}
    return finish(outcome, table=[table_report(r) for r in results] or None)


@flow(name="db-vacuum", log_prints=True)
def vacuum_tables(
    tables: list[str] | None = None,
    dry_run: bool = False,
    environment: str | None = None,
    database_url: SecretStr | None = None,
) -> dict[str, Any]:
    """VACUUM (ANALYZE) every user table, or the tables named, one by one; report dead tuples
    before/after, duration and size per table. Unknown tables: exit 3; not the owner: exit 5."""
    return _maintain("vacuum", tables, dry_run, environment, database_url)


@flow(name="db-analyze", log_prints=True)
def analyze_tables(
    tables: list[str] | None = None,
    dry_run: bool = False,
    environment: str | None = None,
    database_url: SecretStr | None = None,
) -> dict[str, Any]:
    """ANALYZE every user table, or the tables named, one by one, with the same report as vacuum."""
    return _maintain("analyze", tables, dry_run, environment, database_url)


def render_maintenance(console: Console, outcome: dict[str, Any]) -> None:
    """Terminal output of vacuum/analyze: the summary, then one line per table."""
    console.out(outcome.get("message") or "")
    rows = outcome.get("details", {}).get("tables") or []
    if not rows:
        return
    if outcome.get("details", {}).get("dry_run"):
        lines = format_table(
            [{"table": r["table"], "dead tuples": r["dead"], "size": human_bytes(r["size"])} for r in rows],
            ["table", "dead tuples", "size"],
        )
    else:
        lines = format_table(
            [table_report(r) for r in rows],
            ["table", "status", "seconds", "dead before", "dead after", "size"],
        )
    for line in lines:
        console.out(line)


# ---------------------------------------------------------------- purge


@dataclass
class PurgePlan:
    """What a purge will work on, found before anything is removed."""

    table: Table
    column: str
    cutoff: datetime
    parts: list[Table] = field(default_factory=list)  # the table, or its leaf partitions
    audit_log_exists: bool = True
    eligible: int | None = None  # counted in a dry run only
    kept: int | None = None


_DATE_TYPES = ("date", "timestamp without time zone", "timestamp with time zone")


@task(name="plan-purge", cache_policy=NO_CACHE, persist_result=False, **transient_retries())
def plan_purge(
    target: Target,
    settings: MaintenanceSettings,
    table_name: str,
    column: str,
    age: timedelta,
    audit_schema: str,
    count: bool,
) -> PurgePlan:
    with open_target(target, settings, autocommit=True) as conn:
        (table,) = find_tables_in(conn, [table_name])
        if table.kind == "m":
            raise ValidationError(f"{table.qualified} is a materialized view: rows cannot be purged")
        if table.name == "audit_log":
            raise ValidationError(
                f"{table.qualified} is the audit log: purge refuses to remove its own record"
            )
        row = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped",
            (table.oid, column),
        ).fetchone()
        if row is None:
            raise ValidationError(
                f"table {table.qualified} has no column {column!r}: it does not use soft deletes"
                " (give the column with --column)"
            )
        if row[0] not in _DATE_TYPES:
            raise ValidationError(
                f"column {table.qualified}.{column} is {row[0]}, not a timestamp: it cannot say when a row was deleted"
            )
        cutoff = conn.execute("SELECT now() - %s::interval", (age,)).fetchone()[0]
        parts = [table]
        if table.kind == "p":
            parts = [
                Table(s, n, int(o), "r")
                for s, n, o in conn.execute(
                    "SELECT n.nspname, c.relname, c.oid FROM pg_partition_tree(%s::oid::regclass) t"
                    " JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE t.isleaf AND c.relkind = 'r' ORDER BY n.nspname, c.relname",
                    (table.oid,),
                ).fetchall()
            ]
        from flows.maintenance.audit import plan_audit_log  # audit.py builds on this module

        plan = PurgePlan(table, column, cutoff, parts, not plan_audit_log(conn, audit_schema))
        if count:
            eligible, kept = conn.execute(
                sql.SQL(
                    "SELECT count(*) FILTER (WHERE {c} < %(cutoff)s), count(*) FILTER (WHERE {c} >= %(cutoff)s)"
                    " FROM {t} WHERE {c} IS NOT NULL"
                ).format(c=sql.Identifier(column), t=table.sql()),
                {"cutoff": cutoff},
            ).fetchone()
            plan.eligible, plan.kept = eligible, kept
        return plan


@task(name="purge-batch", cache_policy=NO_CACHE, persist_result=False, **transient_retries())
def purge_batch(
    target: Target,
    settings: MaintenanceSettings,
    part: Table,
    column: str,
    cutoff: datetime,
    batch_size: int,
    audit_schema: str,
) -> dict[str, Any]:
    """One batch, one short transaction: its rows go and their audit entry is written together."""
    statement = purge_statement(part, column, ident(audit_schema, "audit_log"))
    with open_target(target, settings, autocommit=True) as conn:
        started = time.perf_counter()
        removed, audit_id = conn.execute(
            statement, {"cutoff": cutoff, "limit": batch_size, "table_name": part.name}
        ).fetchone()
    return {
        "table": part.qualified,
        "rows": int(removed),
        "audit_id": audit_id,
        "seconds": round(time.perf_counter() - started, 3),
    }


@flow(name="db-purge", log_prints=True)
def purge_soft_deleted(
    table: str,
    older_than: str = "90d",
    column: str = "deleted_at",
    batch_size: int = 1000,
    audit_schema: str = "public",
    dry_run: bool = False,
    environment: str | None = None,
    database_url: SecretStr | None = None,
) -> dict[str, Any]:
    """Remove rows soft-deleted (`column` set) longer ago than `older_than` (90d, 36h, 2w), in
    batches of `batch_size`, each its own short transaction with one 'PURGE' entry in
    `audit_schema.audit_log` holding the removed rows (created when missing). A dry run counts
    only. A table without the column: exit 3."""
    settings = load_settings(environment, database_url=database_url)
    target = writable_target(settings, "db purge")
    params = {
        "dry_run": dry_run,
        "database": str(target),
        "table": table,
        "older_than": older_than,
        "column": column,
        "batch_size": batch_size,
        "audit_schema": audit_schema,
    }
    with recorded("db-purge", params, settings) as outcome:
        target = verified_target(target, settings, "db purge")
        age = parse_age(older_than)
        if batch_size < 1:
            raise ValidationError(f"--batch-size {batch_size}: give at least 1")
        plan = plan_purge(target, settings, table, column, age, audit_schema, dry_run)
        where = f"{plan.table.qualified} (soft-deleted before {plan.cutoff:%Y-%m-%d %H:%M:%S %Z})"
        details: dict[str, Any] = {
            "database": str(target),
            "table": plan.table.qualified,
            "column": column,
            "cutoff": plan.cutoff.isoformat(),
            "batch_size": batch_size,
            "dry_run": dry_run,
        }
        if dry_run:
            batches = -(-(plan.eligible or 0) // batch_size)
            outcome.exit_code, outcome.rows = EXIT_DRY_RUN, 0
            outcome.details = details | {"rows": plan.eligible, "batches": batches, "kept": plan.kept}
            outcome.message = (
                f"dry run: would purge {plan.eligible} row(s) from {where} in {batches} batch(es)"
                f" of {batch_size}; {plan.kept} more recently soft-deleted row(s) stay"
            )
            if not plan.audit_log_exists:
                outcome.message += f"; would create {audit_schema}.audit_log"
            return finish(outcome)
        created = []
        if not plan.audit_log_exists:
            from flows.maintenance.audit import ensure_audit_log

            created = ensure_audit_log(target, settings, audit_schema)
        batches = []
        for part in plan.parts:
            while True:
                try:
                    done = purge_batch.with_options(
                        task_run_name=f"purge-{part.qualified}-{len(batches) + 1}"
                    )(target, settings, part, column, plan.cutoff, batch_size, audit_schema)
                except psycopg.Error as exc:  # this batch is rolled back, with its audit entry
                    removed = sum(b["rows"] for b in batches)
                    outcome.rows = removed
                    outcome.details = details | {
                        "rows": removed,
                        "batches": len(batches),
                        "per_batch": batches,
                    }
                    raise sql_failure(
                        exc,
                        target,
                        f"purging {part.qualified} after {removed} row(s) in {len(batches)} batch(es)",
                    ) from None
                if done["rows"]:
                    batches.append(done | {"batch": len(batches) + 1})
                if done["rows"] < batch_size:
                    break
        removed = sum(b["rows"] for b in batches)
        outcome.rows = removed
        outcome.details = details | {
            "rows": removed,
            "batches": len(batches),
            "per_batch": batches,
            "created": created,
        }
        ids = [str(b["audit_id"]) for b in batches]
        entries = ", ".join(ids) if len(ids) <= 5 else f"{ids[0]} … {ids[-1]}"
        outcome.message = (
            f"purged {removed} row(s) from {where} in {len(batches)} batch(es); audit_log entries {entries}"
            if removed
            else f"nothing to purge in {where}"
        )
        if created:
            outcome.message += f"; created {audit_schema}.audit_log"
    return finish(
        outcome,
        table=[{k: b[k] for k in ("batch", "table", "rows", "audit_id", "seconds")} for b in batches] or None,
    )


def render_purge(console: Console, outcome: dict[str, Any]) -> None:
    console.out(outcome.get("message") or "")
    batches = outcome.get("details", {}).get("per_batch") or []
    if len(batches) > 1:
        for line in format_table(batches, ["batch", "table", "rows", "audit_id", "seconds"]):
            console.out(line)
