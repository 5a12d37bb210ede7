"""`db init`: creates what is missing, changes nothing the second time, dry run, bad targets."""

from __future__ import annotations

import psycopg
import pytest
from pydantic import SecretStr

from flows.errors import ConnectionFailure
from flows.maintenance.init import init_database
from flows.records.db import session
from flows.records.procedures import list_executions

from .conftest import opsflow, url_for

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_api")]


def test_init_creates_then_changes_nothing(pg_admin_url, scratch_db_name):
    url = SecretStr(url_for(pg_admin_url, scratch_db_name))
    dry = init_database(dry_run=True, database_url=url)
    assert dry["exit_code"] == 10 and any("create database" in c for c in dry["details"]["changes"])
    with psycopg.connect(pg_admin_url) as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", (scratch_db_name,)).fetchone()

    first = init_database(database_url=url)
    assert first["exit_code"] == 0 and first["rows"] >= 3
    with psycopg.connect(url.get_secret_value()) as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()[0]
        assert owner == "app_owner"
        assert conn.execute("SELECT has_schema_privilege('app_readonly', 'app', 'USAGE')").fetchone()[0]

    second = init_database(database_url=url)
    assert second["exit_code"] == 0 and second["details"]["changes"] == []
    assert "nothing changed" in second["message"]

    with session() as db:
        rows = [r for r in list_executions(db, "db-init", limit=10) if scratch_db_name in r.parameters]
    assert [r.status for r in rows] == ["succeeded", "succeeded", "dry_run"]


def test_unreachable_server_is_exit_4_without_the_password():
    state = init_database(
        database_url=SecretStr("postgresql://postgres:hunter2@127.0.0.1:1/x"), return_state=True
    )
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ConnectionFailure) and "hunter2" not in str(error)
    with session() as db:
        row = list_executions(db, "db-init", limit=1)[0]
    assert row.exit_code == 4 and "hunter2" not in row.parameters + (row.message or "")


def test_cli_bad_setting_exits_3_before_running(scratch_db_name):
    done = opsflow("db", "init", "--database-url", "mysql://x/y")
    assert done.returncode == 3 and "postgresql://" in done.stderr
    assert "Beginning flow run" not in done.stderr


def test_password_never_reaches_the_prefect_api():
    from prefect.client.orchestration import get_client

    state = init_database(
        database_url=SecretStr("postgresql://postgres:hunter2@127.0.0.1:1/x"), return_state=True
    )
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        logs = client.read_logs()
    assert "hunter2" not in str(run.parameters) and "hunter2" not in str(run.state.message)
    assert not any("hunter2" in log.message for log in logs)
