"""`db vacuum|analyze|purge` on real PostgreSQL: per-table reports, batches with audit entries
that can restore what was removed, dry runs, bad tables, unreachable servers; and the pure helpers."""

from __future__ import annotations

import json
from datetime import timedelta
from uuid import uuid4

import psycopg
import pytest
from pydantic import SecretStr

from flows.errors import ValidationError
from flows.maintenance.housekeeping import (
    Table,
    analyze_tables,
    format_table,
    human_bytes,
    parse_age,
    parse_table_name,
    purge_soft_deleted,
    purge_statement,
    split_names,
    summarize_maintenance,
    vacuum_tables,
)
from flows.maintenance.record import ProcedureFailed
from flows.records.db import session
from flows.records.procedures import list_executions

from .conftest import opsflow

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_api")]

UNREACHABLE = "postgresql://postgres:hunter2@127.0.0.1:1/x"

# Seed 004's soft-delete pattern: 2500 rows deleted 100+ days ago, 30 deleted 10 days ago, 50 live.
USERS = """
CREATE TABLE users (
    id SERIAL PRIMARY KEY,
    email TEXT NOT NULL,
    profile JSONB,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    deleted_at TIMESTAMP
);
INSERT INTO users (email, profile, deleted_at)
SELECT 'old' || i || '@example.com', jsonb_build_object('n', i, 'tags', ARRAY['a', 'b']),
       LOCALTIMESTAMP - interval '100 days' - i * interval '1 minute'
FROM generate_series(1, 2500) i;
INSERT INTO users (email, deleted_at)
SELECT 'recent' || i || '@example.com', LOCALTIMESTAMP - interval '10 days' FROM generate_series(1, 30) i;
INSERT INTO users (email) SELECT 'live' || i || '@example.com' FROM generate_series(1, 50) i;
"""


def execute(url: str, statement: str, params: tuple | None = None) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def failure_of(state) -> BaseException:
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BaseException), error
    return error


def executions(name: str, database: str) -> list:
    with session() as db:
        return [r for r in list_executions(db, name, limit=50) if database in r.parameters]


# ---------------------------------------------------------------- purge


def test_purge_in_batches_records_each_batch_and_second_run_removes_nothing(scratch_db):
    execute(scratch_db, USERS)
    url = SecretStr(scratch_db)
    old_rows = execute(
        scratch_db, "SELECT * FROM users WHERE deleted_at < LOCALTIMESTAMP - interval '90 days' ORDER BY id"
    )
    assert len(old_rows) == 2500

    dry = purge_soft_deleted(table="users", older_than="90d", batch_size=1000, dry_run=True, database_url=url)
    assert dry["exit_code"] == 10 and dry["rows"] == 0
    assert dry["details"]["rows"] == 2500 and dry["details"]["batches"] == 3 and dry["details"]["kept"] == 30
    assert "would create public.audit_log" in dry["message"]
    assert execute(scratch_db, "SELECT count(*) FROM users")[0][0] == 2580
    assert execute(scratch_db, "SELECT to_regclass('audit_log')")[0][0] is None  # a dry run creates nothing

    done = purge_soft_deleted(table="users", older_than="90d", batch_size=1000, database_url=url)
    assert done["exit_code"] == 0 and done["rows"] == 2500
    assert done["details"]["batches"] == 3
    assert [b["rows"] for b in done["details"]["per_batch"]] == [1000, 1000, 500]

    entries = execute(
        scratch_db,
        "SELECT id, table_name, operation, user_id, old_values, new_values FROM audit_log ORDER BY id",
    )
    assert [e[0] for e in entries] == [b["audit_id"] for b in done["details"]["per_batch"]]
    assert {(e[1], e[2], e[3], e[5]) for e in entries} == {("users", "PURGE", None, None)}
    assert [len(e[4]) for e in entries] == [1000, 1000, 500]
    logged_ids = sorted(row["id"] for e in entries for row in e[4])
    assert logged_ids == [r[0] for r in old_rows]

    # What is left: the recently soft-deleted and the live rows, untouched.
    left = execute(scratch_db, "SELECT email FROM users ORDER BY id")
    assert len(left) == 80 and all(e.startswith(("recent", "live")) for (e,) in left)

    # The audit entries hold whole rows: putting them back restores exactly what was removed.
    execute(scratch_db, "CREATE TABLE restored (LIKE users)")
    execute(
        scratch_db,
        "INSERT INTO restored SELECT r.* FROM audit_log a,"
        " jsonb_populate_recordset(NULL::users, a.old_values) r WHERE a.operation = 'PURGE'",
    )
    assert execute(scratch_db, "SELECT * FROM restored ORDER BY id") == old_rows

    again = purge_soft_deleted(table="users", older_than="90d", batch_size=1000, database_url=url)
    assert again["exit_code"] == 0 and again["rows"] == 0 and "nothing to purge" in again["message"]
    assert execute(scratch_db, "SELECT count(*) FROM audit_log")[0][0] == 3

    name = scratch_db.rsplit("/", 1)[1]
    assert [r.status for r in executions("db-purge", name)] == ["succeeded", "succeeded", "dry_run"]
    assert [r.rows_affected for r in executions("db-purge", name)][:2] == [0, 2500]


def test_purge_of_a_partitioned_table_keeps_other_partitions_rows(scratch_db):
    # Both partitions' first rows sit at the same ctid (0,1), (0,2)...: a ctid names a row only
    # within one partition, so purging must go partition by partition.
    execute(
        scratch_db,
        """CREATE SCHEMA sales;
        CREATE TABLE sales.events (id INT, region TEXT, deleted_at TIMESTAMPTZ) PARTITION BY LIST (region);
        CREATE TABLE sales.events_eu PARTITION OF sales.events FOR VALUES IN ('eu');
        CREATE TABLE sales.events_us PARTITION OF sales.events FOR VALUES IN ('us');
        INSERT INTO sales.events SELECT i, 'eu', now() - interval '200 days' FROM generate_series(1, 5) i;
        INSERT INTO sales.events SELECT i, 'us', NULL FROM generate_series(11, 15) i;""",
    )
    done = purge_soft_deleted(
        table="sales.events", older_than="30d", batch_size=2, database_url=SecretStr(scratch_db)
    )
    assert done["rows"] == 5 and [b["rows"] for b in done["details"]["per_batch"]] == [2, 2, 1]
    assert {b["table"] for b in done["details"]["per_batch"]} == {"sales.events_eu"}
    assert execute(scratch_db, "SELECT id FROM sales.events ORDER BY id") == [(i,) for i in range(11, 16)]
    assert execute(scratch_db, "SELECT DISTINCT table_name FROM audit_log") == [("events_eu",)]


def test_a_failing_batch_is_rolled_back_with_its_audit_entry_and_earlier_batches_stay(scratch_db):
    execute(
        scratch_db,
        """CREATE TABLE customers (id INT PRIMARY KEY, deleted_at TIMESTAMP);
        INSERT INTO customers SELECT i, LOCALTIMESTAMP - interval '1 year' FROM generate_series(1, 5) i;
        CREATE TABLE invoices (id INT, customer_id INT REFERENCES customers);
        INSERT INTO invoices VALUES (1, 5);""",
    )
    state = purge_soft_deleted(
        table="customers",
        older_than="90d",
        batch_size=2,
        database_url=SecretStr(scratch_db),
        return_state=True,
    )
    error = failure_of(state)
    assert error.exit_code == 1 and "\n" not in str(error)
    assert str(error).startswith("purging public.customers after 4 row(s) in 2 batch(es) failed: ")
    assert "violates foreign key constraint" in str(error)
    assert execute(scratch_db, "SELECT id FROM customers") == [(5,)]
    assert execute(scratch_db, "SELECT jsonb_array_length(old_values) FROM audit_log ORDER BY id") == [
        (2,),
        (2,),
    ]
    name = scratch_db.rsplit("/", 1)[1]
    (run,) = [r for r in executions("db-purge", name)]
    assert run.exit_code == 1 and run.rows_affected == 4


def test_purge_refuses_bad_tables_columns_and_ages_with_exit_3(scratch_db):
    execute(
        scratch_db,
        "CREATE TABLE plain (id INT); CREATE TABLE typed (id INT, deleted_at BOOLEAN);"
        "CREATE VIEW v AS SELECT 1 AS deleted_at;",
    )
    url = SecretStr(scratch_db)
    cases = [
        ({"table": "plain"}, "table public.plain has no column 'deleted_at'"),
        ({"table": "typed"}, "column public.typed.deleted_at is boolean, not a timestamp"),
        ({"table": "v"}, "public.v is a view, not a table"),
    ]
    for params, expected in cases:
        error = failure_of(purge_soft_deleted(database_url=url, return_state=True, **params))
        assert isinstance(error, ValidationError) and error.exit_code == 3, (params, error)
        assert expected in str(error), (params, str(error))
    assert execute(scratch_db, "SELECT to_regclass('audit_log')")[0][0] is None


def test_purge_with_an_incompatible_audit_log_exits_2_and_removes_nothing(scratch_db):
    execute(scratch_db, USERS + "; CREATE TABLE audit_log (id INT, note TEXT);")
    error = failure_of(
        purge_soft_deleted(
            table="users", older_than="90d", database_url=SecretStr(scratch_db), return_state=True
        )
    )
    assert error.exit_code == 2 and "audit_log exists but has no column(s) table_name" in str(error)
    assert execute(scratch_db, "SELECT count(*) FROM users")[0][0] == 2580


def test_cli_purge_dry_run_json(scratch_db):
    execute(scratch_db, USERS)
    dry = opsflow(
        "db", "purge", "users", "--older-than", "90d", "--dry-run", "--json", "--database-url", scratch_db
    )
    assert dry.returncode == 10, dry.stderr
    result = json.loads(dry.stdout)
    assert result["details"]["rows"] == 2500 and result["details"]["batches"] == 3
    assert execute(scratch_db, "SELECT count(*) FROM users")[0][0] == 2580


# ---------------------------------------------------------------- vacuum / analyze


TABLES = """
CREATE TABLE orders (id INT PRIMARY KEY, note TEXT);
INSERT INTO orders SELECT i, repeat('x', 50) FROM generate_series(1, 2000) i;
DELETE FROM orders WHERE id <= 800;
CREATE SCHEMA app;
CREATE TABLE app."Mixed Case" (id INT);
CREATE TABLE app.measurements (id INT, at DATE) PARTITION BY RANGE (at);
CREATE TABLE app.measurements_2024 PARTITION OF app.measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
INSERT INTO app.measurements SELECT i, DATE '2024-03-01' FROM generate_series(1, 100) i;
CREATE VIEW order_view AS SELECT * FROM orders;
"""


def test_vacuum_all_then_a_list_reports_dead_tuples_and_sizes(scratch_db):
    execute(scratch_db, TABLES)  # the connection closes: its statistics are flushed
    url = SecretStr(scratch_db)

    dry = vacuum_tables(dry_run=True, database_url=url)
    assert dry["exit_code"] == 10
    assert [t["table"] for t in dry["details"]["tables"]] == [
        "app.Mixed Case",
        "app.measurements",
        "public.orders",
    ]
    assert execute(scratch_db, "SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'orders'") == [
        (None,)
    ]

    everything = vacuum_tables(database_url=url)
    assert everything["exit_code"] == 0 and everything["rows"] == 3
    by_name = {t["table"]: t for t in everything["details"]["tables"]}
    orders = by_name["public.orders"]
    assert orders["status"] == "ok" and orders["dead_before"] == 800 and orders["dead_after"] == 0
    assert orders["size_after"] > 8192 and orders["seconds"] >= 0
    # The partitioned table is vacuumed through its parent: its partition's statistics count.
    assert by_name["app.measurements"]["live"] == 100
    assert execute(
        scratch_db, "SELECT relname FROM pg_stat_user_tables WHERE last_vacuum IS NULL ORDER BY relname"
    ) == [("measurements",)]  # (a partitioned parent holds no rows of its own)
    assert "800 dead tuple(s) removed" in everything["message"]

    listed = vacuum_tables(tables=['app."Mixed Case"', "ORDERS", "orders"], database_url=url)
    assert [t["table"] for t in listed["details"]["tables"]] == ["app.Mixed Case", "public.orders"]
    assert listed["details"]["tables"][1]["dead_before"] == 0


def test_analyze_all_and_a_list(scratch_db):
    execute(scratch_db, TABLES)
    url = SecretStr(scratch_db)
    one = analyze_tables(tables=["app.measurements"], database_url=url)
    assert one["exit_code"] == 0 and [t["table"] for t in one["details"]["tables"]] == ["app.measurements"]
    analyzed = execute(
        scratch_db, "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL ORDER BY relname"
    )
    assert analyzed == [("measurements",), ("measurements_2024",)]

    everything = analyze_tables(database_url=url)
    assert everything["exit_code"] == 0 and everything["message"].startswith("analyzed 3 of 3 table(s)")
    assert execute(scratch_db, "SELECT count(*) FROM pg_stat_user_tables WHERE last_analyze IS NULL") == [
        (0,)
    ]
    assert execute(scratch_db, "SELECT count(*) FROM pg_stats WHERE tablename = 'orders'")[0][0] == 2


def test_a_locked_table_fails_alone_after_retries(scratch_db, monkeypatch):
    execute(scratch_db, "CREATE TABLE free (id INT); CREATE TABLE locked (id INT)")
    monkeypatch.setenv("OPSFLOW_LOCK_TIMEOUT_SECONDS", "0.2")
    with psycopg.connect(scratch_db) as holder:
        holder.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        state = vacuum_tables(database_url=SecretStr(scratch_db), return_state=True)
        error = failure_of(state)
    assert isinstance(error, ProcedureFailed) and error.exit_code == 1
    results = {r["table"]: r for r in error.outcome["details"]["tables"]}
    assert results["public.free"]["status"] == "ok"
    assert (
        results["public.locked"]["status"] == "failed" and "lock timeout" in results["public.locked"]["error"]
    )
    assert "failed: public.locked (canceling statement due to lock timeout)" in error.outcome["message"]
    # Given up after two retries: the locked table's task ran three times, the free one once.
    runs = {run.name: run.run_count for run in _task_runs(state, "vacuum-")}
    assert runs == {"vacuum-public.free": 1, "vacuum-public.locked": 3}


def _task_runs(state, name: str) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        return [r for r in client.read_task_runs(flow_run_filter=flow_run) if r.name.startswith(name)]


def test_unknown_tables_and_views_are_exit_3_naming_them(scratch_db):
    execute(scratch_db, TABLES)
    error = failure_of(
        vacuum_tables(
            tables=["orders", "nosuch", "app.orders", "order_view"],
            database_url=SecretStr(scratch_db),
            return_state=True,
        )
    )
    assert isinstance(error, ValidationError) and error.exit_code == 3
    name = scratch_db.rsplit("/", 1)[1]
    assert str(error) == (
        f"no table 'nosuch'; no table 'app.orders'; public.order_view is a view, not a table (database {name})"
    )
    assert execute(scratch_db, "SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'orders'") == [
        (None,)
    ]


def test_a_table_in_several_schemas_must_be_qualified(scratch_db):
    execute(
        scratch_db, "CREATE SCHEMA a; CREATE SCHEMA b; CREATE TABLE a.t (i INT); CREATE TABLE b.t (i INT);"
    )
    error = failure_of(analyze_tables(tables=["t"], database_url=SecretStr(scratch_db), return_state=True))
    assert error.exit_code == 3 and "'t' is in several schemas (a, b): qualify it" in str(error)
    assert analyze_tables(tables=["b.t"], database_url=SecretStr(scratch_db))["exit_code"] == 0


def test_tables_we_do_not_own_are_reported_skipped_with_exit_5(scratch_db):
    role = f"opsflow_t_{uuid4().hex[:8]}"
    execute(scratch_db, "CREATE TABLE owned_by_postgres (id INT)")
    execute(scratch_db, f'CREATE ROLE "{role}" LOGIN')
    try:
        as_role = scratch_db.replace("postgresql://postgres@", f"postgresql://{role}@", 1)
        assert as_role != scratch_db, "the test server URL must name the postgres user"
        state = vacuum_tables(database_url=SecretStr(as_role), return_state=True)
        error = failure_of(state)
        assert isinstance(error, ProcedureFailed) and error.exit_code == 5
        (result,) = error.outcome["details"]["tables"]
        assert result["status"] == "skipped" and "only table or database owner" in result["error"]
        assert "skipped (not the owner): public.owned_by_postgres" in error.outcome["message"]
    finally:
        execute(scratch_db, f'DROP ROLE "{role}"')


def test_cli_unreachable_server_is_exit_4_and_the_password_is_nowhere():
    down = opsflow("db", "analyze", "--database-url", UNREACHABLE)
    assert (
        down.returncode == 4
        and "cannot reach PostgreSQL at postgresql://postgres@127.0.0.1:1/x" in down.stderr
    )
    assert "hunter2" not in down.stdout + down.stderr
    with session() as db:
        row = list_executions(db, "db-analyze", limit=1)[0]
    assert row.exit_code == 4 and "cannot reach" in row.message
    assert "hunter2" not in row.parameters + row.message


def test_cli_vacuum_prints_one_line_per_table(scratch_db):
    execute(scratch_db, TABLES)
    done = opsflow("db", "vacuum", "-t", "orders", "--database-url", scratch_db)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("vacuumed 1 of 1 table(s)")
    assert lines[1].split() == ["table", "status", "seconds", "dead", "before", "dead", "after", "size"]
    assert lines[2].split()[:2] == ["public.orders", "ok"] and lines[2].split()[3:5] == ["800", "0"]


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("users", (None, "users")),
        ("Users", (None, "users")),
        ("app.Orders", ("app", "orders")),
        ('"Mixed Case"', (None, "Mixed Case")),
        ('app."a.b"', ("app", "a.b")),
        ('"say ""hi"""', (None, 'say "hi"')),
        (" public . t ", ("public", "t")),
    ],
)
def test_parse_table_name(text, expected):
    assert parse_table_name(text) == expected


@pytest.mark.parametrize("text", ["", "a.b.c", "a.", ".b", '"open', '"a"b'])
def test_parse_table_name_rejects(text):
    with pytest.raises(ValidationError):
        parse_table_name(text)


def test_parse_age_and_names():
    assert parse_age("90d") == parse_age("90") == parse_age("90 days") == timedelta(days=90)
    assert parse_age("36h") == timedelta(hours=36) and parse_age("2W") == timedelta(weeks=2)
    for bad in ("-1d", "1.5d", "90m", "soon"):
        with pytest.raises(ValidationError):
            parse_age(bad)
    assert split_names(["a,b", " c ", "a", ""]) == ["a", "b", "c"] and split_names(None) == []


def test_format_table_and_sizes():
    lines = format_table(
        [{"table": "public.a", "dead": 5, "secs": 0.5}, {"table": "b", "dead": None, "secs": 12.25}],
        ["table", "dead", "secs"],
    )
    assert lines == ["table     dead   secs", "public.a     5   0.50", "b            -  12.25"]
    assert [human_bytes(n) for n in (None, 0, 1023, 1536, 5 * 1024**3)] == [
        "-",
        "0 B",
        "1023 B",
        "1.5 kB",
        "5.0 GB",
    ]


def test_summarize_maintenance_exit_codes():
    ok = {"table": "a", "status": "ok", "seconds": 1.0, "dead_before": 10, "dead_after": 2}
    assert summarize_maintenance("vacuum", "db", [ok]) == (
        0,
        "vacuumed 1 of 1 table(s) in db in 1.00s; 8 dead tuple(s) removed",
    )
    failed = {"table": "b", "status": "failed", "error": "lock timeout"}
    skipped = {"table": "c", "status": "skipped", "error": "skipping"}
    code, text = summarize_maintenance("analyze", "db", [ok, failed, skipped])
    assert code == 1 and "failed: b (lock timeout)" in text and "skipped (not the owner): c" in text
    assert summarize_maintenance("analyze", "db", [ok, skipped])[0] == 5
    assert summarize_maintenance("vacuum", "db", [])[0] == 0


def test_purge_statement_quotes_every_name():
    text = purge_statement(
        Table("my schema", 'we"ird', 1), "Deleted At", psycopg.sql.SQL("x.audit_log")
    ).as_string(None)
    assert 'DELETE FROM "my schema"."we""ird" WHERE ctid = ANY(ARRAY(' in text
    assert 'WHERE "Deleted At" < %(cutoff)s' in text and "FOR UPDATE SKIP LOCKED" in text
    assert "%(table_name)s" in text and "'PURGE'" in text
