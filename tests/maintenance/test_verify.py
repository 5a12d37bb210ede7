"""Seed 003's matrix: init → migrate → extensions → verify; prerequisites, differences, caching."""

from __future__ import annotations

import shutil

import psycopg
import pytest
from pydantic import SecretStr

from flows.errors import DependencyError, ValidationError
from flows.maintenance.migrate import migrate
from flows.maintenance.record import ProcedureFailed
from flows.maintenance.schema import ExpectedSchema, diff, load_expected
from flows.maintenance.verify import extensions, setup, verify
from tests.conftest import ROOT

from .conftest import opsflow, url_for

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Copies of the sample migrations and expected schema, configured through settings."""
    migrations = tmp_path / "migrations"
    shutil.copytree(ROOT / "deployments" / "migrations", migrations)
    expected = tmp_path / "schema.yaml"
    shutil.copy(ROOT / "deployments" / "maintenance" / "schema.yaml", expected)
    monkeypatch.setenv("OPSFLOW_MIGRATIONS_DIR", str(migrations))
    monkeypatch.setenv("OPSFLOW_EXPECTED_SCHEMA", str(expected))
    monkeypatch.setenv("OPSFLOW_BACKUP_DIR", str(tmp_path / "backups"))
    return migrations, expected


def failure(state):
    assert state.is_failed()
    return state.result(raise_on_failure=False)


def test_each_step_needs_the_one_before(project, pg_admin_url, scratch_db_name):
    url = SecretStr(url_for(pg_admin_url, scratch_db_name))
    error = failure(extensions(database_url=url, return_state=True))
    assert isinstance(error, DependencyError) and "db init" in str(error)
    done = setup(database_url=url)
    assert [d["step"] for d in done["details"]["completed"]] == ["init", "migrate", "extensions", "verify"]
    # A new pending migration: extensions and verify refuse until it is applied.
    migrations, _ = project
    (migrations / "004_more.sql").write_text("CREATE TABLE app.more (id int);\n")
    error = failure(verify(database_url=url, return_state=True))
    assert isinstance(error, DependencyError) and error.exit_code == 2 and "db migrate" in str(error)
    with psycopg.connect(url.get_secret_value(), autocommit=True) as conn:
        conn.execute("DROP EXTENSION pg_trgm")
    migrate(database_url=url)
    error = failure(verify(database_url=url, return_state=True))
    assert "pg_trgm" in str(error) and "db extensions" in str(error)


def test_verify_reports_differences_and_is_cached_by_migration_head(project, pg_admin_url, scratch_db_name):
    migrations, expected = project
    url = SecretStr(url_for(pg_admin_url, scratch_db_name))
    setup(database_url=url)
    cached = verify(database_url=url)
    assert cached["details"]["cached"] is True  # setup's verify already proved this head
    # A change behind opsflow's back stays unseen while the head and the cache hold...
    with psycopg.connect(url.get_secret_value()) as conn:
        conn.execute("DROP INDEX app.songs_user_id_idx")
    assert verify(database_url=url)["details"]["cached"] is True
    # ...and is found with --no-cache.
    error = failure(verify(no_cache=True, database_url=url, return_state=True))
    assert isinstance(error, ProcedureFailed) and "missing index songs_user_id_idx" in str(error)
    # A new migration moves the head: verification runs again by itself.
    (migrations / "004_index.sql").write_text("CREATE INDEX songs_user_id_idx ON app.songs (user_id);\n")
    migrate(database_url=url)
    again = verify(database_url=url)
    assert again["exit_code"] == 0 and again["details"]["cached"] is False and again["details"]["head"] == 4


def test_schema_diff_rules(tmp_path):
    expected = ExpectedSchema.model_validate(
        {
            "tables": {
                "app.t": {
                    "columns": {"id": "int", "at": "timestamptz", "gone": "text"},
                    "indexes": ["t_pkey"],
                }
            }
        }
    )
    actual = {
        "app.t": {"columns": {"id": "bigint", "at": "timestamp with time zone"}, "indexes": []},
        "app.new": {"columns": {}, "indexes": []},
        "other.x": {"columns": {}, "indexes": []},
    }
    report = diff(expected, actual)
    assert report["problems"] == [
        "column app.t.id is bigint, expected integer",
        "missing column app.t.gone",
        "missing index t_pkey on app.t",
    ]
    assert report["extra"] == ["table app.new is not in the expected schema"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables:\n  app.t:\n    colums: {}\n")
    with pytest.raises(ValidationError, match="colums"):
        load_expected(bad)
    bad.write_text("tables: [\n")
    with pytest.raises(ValidationError, match=r"bad.yaml:\d+"):
        load_expected(bad)


def test_cli_exit_codes(project, pg_admin_url, scratch_db_name):
    url = url_for(pg_admin_url, scratch_db_name)
    missing = opsflow("db", "verify", "--database-url", url, "-q")
    assert missing.returncode == 2 and "db init" in missing.stderr
    done = opsflow("db", "setup", "--database-url", url, "-q")
    assert done.returncode == 0 and "schema matches" in done.stdout
