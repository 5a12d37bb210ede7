"""`db audit enable|status` and `db slow-queries` on real PostgreSQL, and their pure parts."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr
from typer.testing import CliRunner

from flows.errors import DependencyError, ValidationError
from flows.maintenance.audit import (
    AUDIT_TGTYPE,
    audit_status,
    enable_audit_trail,
    enable_instructions,
    one_line,
    preloaded,
    render_slow_query_lines,
    slow_queries,
    slow_queries_sql,
    slow_query_rows,
    trigger_is_current,
    trigger_name,
)
from flows.maintenance.housekeeping import purge_soft_deleted
from flows.records.db import session
from flows.records.procedures import list_executions

from .conftest import opsflow

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_api")]


def execute(url: str, statement: str, params: tuple | None = None) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def failure_of(state) -> BaseException:
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BaseException), error
    return error


def audit_rows(url: str, schema: str = "public") -> list[tuple]:
    return execute(
        url,
        sql.SQL("SELECT table_name, operation, user_id, old_values, new_values FROM {} ORDER BY id")
        .format(sql.Identifier(schema, "audit_log"))
        .as_string(None),
    )


# ---------------------------------------------------------------- audit


def test_enable_audits_changes_with_the_user_and_a_second_run_changes_nothing(scratch_db):
    execute(
        scratch_db,
        "CREATE TABLE users (id SERIAL PRIMARY KEY, email TEXT NOT NULL, name TEXT);"
        "CREATE SCHEMA shop; CREATE TABLE shop.orders (id SERIAL PRIMARY KEY, total NUMERIC(10, 2));",
    )
    url = SecretStr(scratch_db)

    dry = enable_audit_trail(tables=["users", "shop.orders"], dry_run=True, database_url=url)
    assert dry["exit_code"] == 10 and dry["details"]["changes"] == [
        "create table public.audit_log",
        "create function public.audit_trigger()",
        "create trigger users_audit on public.users",
        "create trigger orders_audit on shop.orders",
    ]
    assert execute(scratch_db, "SELECT to_regclass('audit_log'), (SELECT count(*) FROM pg_trigger)") == [
        (None, 0)
    ]

    first = enable_audit_trail(tables=["users", "shop.orders"], database_url=url)
    assert first["exit_code"] == 0 and first["details"]["changes"] == dry["details"]["changes"]
    assert first["rows"] == 4

    with psycopg.connect(scratch_db, autocommit=True) as conn:
        conn.execute("SET app.user_id = '7'")
        conn.execute("INSERT INTO users (email, name) VALUES ('ann@example.com', 'Ann')")
        conn.execute("UPDATE users SET name = 'Anne' WHERE id = 1")
        conn.execute("DELETE FROM users WHERE id = 1")
    execute(scratch_db, "INSERT INTO shop.orders (total) VALUES (12.50)")  # no app.user_id: NULL

    ann = {"id": 1, "email": "ann@example.com", "name": "Ann"}
    anne = ann | {"name": "Anne"}
    assert audit_rows(scratch_db) == [
        ("users", "INSERT", 7, None, ann),
        ("users", "UPDATE", 7, ann, anne),
        ("users", "DELETE", 7, anne, None),
        ("orders", "INSERT", None, None, {"id": 1, "total": 12.50}),
    ]
    assert execute(scratch_db, "SELECT count(*) FROM users") == [(0,)]  # the DELETE itself went through

    second = enable_audit_trail(tables=["users", "shop.orders"], database_url=url)
    assert second["exit_code"] == 0 and second["details"]["changes"] == [] and second["rows"] == 0
    assert "already audited" in second["message"] and "nothing changed" in second["message"]
    assert all(t["already audited"] for t in second["details"]["tables"])

    status = audit_status(database_url=url)
    assert status["details"]["tables"] == [
        {"table": "public.users", "trigger": "users_audit", "enabled": True},
        {"table": "shop.orders", "trigger": "orders_audit", "enabled": True},
    ]

    name = scratch_db.rsplit("/", 1)[1]
    with session() as db:
        runs = [r for r in list_executions(db, "db-audit-enable", limit=20) if name in r.parameters]
    assert [r.status for r in runs] == ["succeeded", "succeeded", "dry_run"]


def test_enable_repairs_a_disabled_trigger_and_a_changed_function(scratch_db):
    execute(scratch_db, "CREATE TABLE t (id INT)")
    url = SecretStr(scratch_db)
    enable_audit_trail(tables=["t"], database_url=url)
    execute(
        scratch_db,
        "ALTER TABLE t DISABLE TRIGGER t_audit;"
        " CREATE OR REPLACE FUNCTION audit_trigger() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';",
    )
    status = audit_status(database_url=url)
    assert "trigger disabled on public.t" in status["message"]

    repaired = enable_audit_trail(tables=["t"], database_url=url)
    assert repaired["details"]["changes"] == [
        "replace function public.audit_trigger()",
        "replace trigger t_audit on public.t",
    ]
    execute(scratch_db, "INSERT INTO t VALUES (1)")
    assert audit_rows(scratch_db) == [("t", "INSERT", None, None, {"id": 1})]


def test_audit_log_in_its_own_schema_whatever_the_search_path(scratch_db):
    execute(scratch_db, "CREATE TABLE items (id INT, deleted_at TIMESTAMP)")
    url = SecretStr(scratch_db)
    missing = failure_of(
        enable_audit_trail(tables=["items"], audit_schema="audit", database_url=url, return_state=True)
    )
    assert missing.exit_code == 3 and "schema 'audit' does not exist" in str(missing)

    execute(scratch_db, "CREATE SCHEMA audit")
    enable_audit_trail(tables=["items"], audit_schema="audit", database_url=url)
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        conn.execute("SET search_path = pg_catalog")
        conn.execute("INSERT INTO public.items VALUES (1, LOCALTIMESTAMP - interval '1 year'), (2, NULL)")
    assert execute(scratch_db, "SELECT to_regclass('public.audit_log')") == [(None,)]
    assert [r[1] for r in audit_rows(scratch_db, "audit")] == ["INSERT", "INSERT"]

    # Purging an audited table: one PURGE entry for the batch, then (AFTER triggers fire at the end
    # of the statement) the trigger's DELETE per row.
    purged = purge_soft_deleted(table="items", older_than="30d", audit_schema="audit", database_url=url)
    assert purged["rows"] == 1
    rows = audit_rows(scratch_db, "audit")
    assert [r[1] for r in rows] == ["INSERT", "INSERT", "PURGE", "DELETE"]
    assert rows[2][3] == [rows[3][3]] and rows[3][3]["id"] == 1


def test_enable_refuses_unknown_tables_views_and_the_audit_log_itself(scratch_db):
    execute(
        scratch_db,
        "CREATE TABLE t (id INT); CREATE MATERIALIZED VIEW mv AS SELECT 1 AS x;"
        " CREATE TABLE audit_log (id BIGSERIAL PRIMARY KEY, table_name TEXT, operation TEXT, user_id INTEGER,"
        " old_values JSONB, new_values JSONB, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)",
    )
    url = SecretStr(scratch_db)
    cases = [
        (["t", "nosuch"], "no table 'nosuch'"),
        (["mv"], "public.mv is a materialized view: it cannot have triggers"),
        (["audit_log"], "public.audit_log is the audit log itself"),
    ]
    for tables, expected in cases:
        error = failure_of(enable_audit_trail(tables=tables, database_url=url, return_state=True))
        assert isinstance(error, ValidationError) and expected in str(error), (tables, error)
    assert execute(scratch_db, "SELECT count(*) FROM pg_trigger") == [(0,)]
    # An existing audit_log of the right shape is used as it is.
    assert enable_audit_trail(tables=["t"], database_url=url)["details"]["changes"] == [
        "create function public.audit_trigger()",
        "create trigger t_audit on public.t",
    ]


def test_every_command_has_help():
    from flows.batch import app

    runner = CliRunner()
    for command in (
        ["vacuum"],
        ["analyze"],
        ["purge"],
        ["slow-queries"],
        ["audit", "enable"],
        ["audit", "status"],
    ):
        done = runner.invoke(app, ["db", *command, "--help"])
        assert done.exit_code == 0 and "--database-url" in done.output and "--json" in done.output, command


# ---------------------------------------------------------------- slow queries


def test_slow_queries_without_preload_exit_2_saying_how_to_enable(scratch_db):
    libraries = execute(scratch_db, "SHOW shared_preload_libraries")[0][0]
    if preloaded(libraries):
        pytest.skip("this server preloads pg_stat_statements: the how-to path cannot be reached")
    name = scratch_db.rsplit("/", 1)[1]
    url = SecretStr(scratch_db)
    for extension_created in (False, True):
        if extension_created:
            execute(scratch_db, "CREATE EXTENSION pg_stat_statements")
        error = failure_of(slow_queries(database_url=url, return_state=True))
        assert isinstance(error, DependencyError) and error.exit_code == 2
        text = str(error)
        assert text.startswith("pg_stat_statements is not preloaded: ")
        assert "shared_preload_libraries = 'pg_stat_statements'" in text and "restart PostgreSQL" in text
        assert f"CREATE EXTENSION IF NOT EXISTS pg_stat_statements in database {name}" in text

    done = opsflow("db", "slow-queries", "--limit", "5", "--database-url", scratch_db)
    assert done.returncode == 2 and "restart PostgreSQL" in done.stderr and "Traceback" not in done.stderr
    with session() as db:
        assert list_executions(db, "db-slow-queries", limit=1)[0].exit_code == 2


def test_the_report_query_fits_the_real_view_and_ranks_constructed_rows(scratch_db):
    execute(scratch_db, "CREATE EXTENSION pg_stat_statements")
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        version = conn.info.server_version
        # The columns the report reads exist in this server's pg_stat_statements: planning is enough.
        for by in ("total", "mean", "max", "calls"):
            conn.execute(sql.SQL("EXPLAIN ") + slow_queries_sql("public", version, by), {"limit": 5})

        # The same query over rows we made, in a table shaped like the view.
        conn.execute(
            "CREATE SCHEMA fake; CREATE TABLE fake.pg_stat_statements (dbid OID, queryid BIGINT, query TEXT,"
            " calls BIGINT, total_exec_time FLOAT8, mean_exec_time FLOAT8, max_exec_time FLOAT8, rows BIGINT,"
            " shared_blks_hit BIGINT, shared_blks_read BIGINT)"
        )
        here = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
        conn.execute(
            "INSERT INTO fake.pg_stat_statements VALUES"
            " (%(here)s, 1, 'SELECT 1', 1000, 500.0, 0.5, 3.0, 1000, 990, 10),"
            " (%(here)s, 2, 'UPDATE big SET x = $1', 2, 9000.0, 4500.0, 8000.0, 5, 0, 0),"
            " (%(here)s, 3, 'SELECT *\n  FROM t', 10, 700.0, 70.0, 90.0, 100, 50, 50),"
            " (0, 4, 'other database', 1, 99999.0, 99999.0, 99999.0, 1, 0, 0)",
            {"here": here},
        )
        by_total = conn.execute(slow_queries_sql("fake", version, "total"), {"limit": 2}).fetchall()
        by_calls = conn.execute(slow_queries_sql("fake", version, "calls"), {"limit": 10}).fetchall()
    rows = slow_query_rows(by_total)
    assert [(r["rank"], r["queryid"], r["total_ms"]) for r in rows] == [(1, "2", 9000.0), (2, "3", 700.0)]
    assert rows[0]["hit_percent"] is None and rows[1]["hit_percent"] == 50.0
    assert [r[0] for r in by_calls] == [1, 3, 2]  # and never the other database's statement
    lines = render_slow_query_lines(slow_query_rows(by_calls))
    assert lines[0].split() == [
        "#",
        "calls",
        "total",
        "ms",
        "mean",
        "ms",
        "max",
        "ms",
        "rows",
        "hit",
        "%",
        "query",
    ]
    assert lines[1].split() == ["1", "1000", "500.00", "0.50", "3.00", "1000", "99.00", "SELECT", "1"]
    assert lines[2].endswith("SELECT * FROM t") and len(lines) == 4


# ---------------------------------------------------------------- pure helpers


def test_trigger_names_fit_63_bytes():
    assert trigger_name("users") == "users_audit"
    long = trigger_name("x" * 63)
    assert long == "x" * 57 + "_audit" and len(long.encode()) == 63
    wide = trigger_name("é" * 40)  # two bytes each
    assert len(wide.encode()) <= 63 and wide.endswith("_audit") and wide.startswith("é" * 28)


def test_trigger_is_current():
    assert trigger_is_current((42, AUDIT_TGTYPE, "O", True), 42)
    assert not trigger_is_current(None, 42)
    assert not trigger_is_current((42, AUDIT_TGTYPE, "O", True), None)
    assert not trigger_is_current((41, AUDIT_TGTYPE, "O", True), 42)  # another function
    assert not trigger_is_current((42, 1 | 4, "O", True), 42)  # INSERT only
    assert not trigger_is_current((42, AUDIT_TGTYPE, "D", True), 42)  # disabled
    assert not trigger_is_current((42, AUDIT_TGTYPE, "O", False), 42)  # WHEN or UPDATE OF


def test_preloaded_reads_the_setting_as_postgres_writes_it():
    assert preloaded("pg_stat_statements")
    assert preloaded('auto_explain, "pg_stat_statements"')
    assert not preloaded("") and not preloaded("auto_explain") and not preloaded("pg_stat_statements_x")


def test_enable_instructions_name_only_what_is_missing():
    created_only = enable_instructions("app", available=True, is_preloaded=True)
    assert created_only == (
        "pg_stat_statements is not created in this database: "
        "run CREATE EXTENSION IF NOT EXISTS pg_stat_statements in database app"
    )
    not_installed = enable_instructions("app", available=False, is_preloaded=False)
    assert not_installed.startswith("pg_stat_statements is not installed: install the PostgreSQL contrib")
    assert "restart PostgreSQL" in not_installed


def test_report_query_names_and_rendering_edge_cases():
    old = slow_queries_sql("s", 120000, "mean").as_string(None)
    assert 's."mean_time" AS mean_ms' in old and 'ORDER BY s."mean_time" DESC' in old
    new = slow_queries_sql("my schema", 150000, "max").as_string(None)
    assert 'FROM "my schema"."pg_stat_statements" s' in new and 'ORDER BY s."max_exec_time"' in new
    with pytest.raises(ValidationError):
        slow_queries_sql("s", 150000, "rows; DROP TABLE x")
    assert render_slow_query_lines([]) == ["no statements recorded yet for this database"]
    assert one_line("a\n  b " + "c" * 100, 10) == "a b ccccc…"
    assert json.dumps(slow_query_rows([(None, None, None, None, None, None, None, None, None)]))
