"""`db migrate` on a real PostgreSQL: order, history, backup + restore on failure, checksums."""

from __future__ import annotations

import shutil

import psycopg
import pytest
from pydantic import SecretStr

from flows.errors import DependencyError, ValidationError
from flows.maintenance.init import init_database
from flows.maintenance.migrate import MigrationFailed, migrate
from flows.maintenance.migrations import discover
from flows.maintenance.record import ProcedureFailed
from tests.conftest import ROOT

from .conftest import opsflow, url_for

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_api")]
SAMPLES = ROOT / "deployments" / "migrations"


@pytest.fixture
def app_db(pg_admin_url, scratch_db_name, tmp_path, monkeypatch):
    """An initialised application database, its URL, and a copy of the sample migrations."""
    monkeypatch.setenv("OPSFLOW_BACKUP_DIR", str(tmp_path / "backups"))
    url = url_for(pg_admin_url, scratch_db_name)
    init_database(database_url=SecretStr(url))
    folder = tmp_path / "migrations"
    shutil.copytree(SAMPLES, folder)
    return url, folder


def rows(url: str, query: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def test_applies_in_order_records_history_and_is_idempotent(app_db):
    url, folder = app_db
    dry = migrate(dry_run=True, migrations_dir=str(folder), database_url=SecretStr(url))
    assert dry["exit_code"] == 10 and len(dry["details"]["pending"]) == 3
    assert rows(url, "SELECT to_regclass('app.users')") == [(None,)]

    done = migrate(migrations_dir=str(folder), database_url=SecretStr(url))
    assert done["exit_code"] == 0 and [m["version"] for m in done["details"]["applied"]] == [1, 2, 3]
    history = rows(url, "SELECT version, checksum, success, duration >= 0 FROM migration_history ORDER BY id")
    assert [(v, s, d) for v, _, s, d in history] == [(1, True, True), (2, True, True), (3, True, True)]
    assert [c for _, c, _, _ in history] == [m.checksum for m in discover(folder)]
    # CONCURRENTLY ran outside a transaction (psql), and the index exists.
    assert rows(url, "SELECT indexname FROM pg_indexes WHERE indexname = 'songs_deleted_at_idx'")

    again = migrate(migrations_dir=str(folder), database_url=SecretStr(url))
    assert again["exit_code"] == 0 and "up to date at version 3" in again["message"]
    assert len(rows(url, "SELECT 1 FROM migration_history")) == 3


def test_failing_migration_restores_the_database_and_keeps_every_row(app_db):
    url, folder = app_db
    migrate(migrations_dir=str(folder), database_url=SecretStr(url))
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO app.users (email) SELECT 'u' || g || '@x' FROM generate_series(1, 500) g")
        conn.execute("INSERT INTO app.songs (user_id, title) SELECT id, 'song ' || id FROM app.users")
    (folder / "004_add_genre.sql").write_text("ALTER TABLE app.songs ADD COLUMN genre text;\n")
    (folder / "005_broken.sql").write_text(
        "UPDATE app.songs SET genre = 'rock';\nDELETE FROM app.songs;\nSELEC oops FROM nowhere;\n"
    )
    state = migrate(migrations_dir=str(folder), database_url=SecretStr(url), return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ProcedureFailed) and error.exit_code == 1
    assert (
        "005_broken.sql:3" in error.outcome["message"] and "restored from backup" in error.outcome["message"]
    )
    # 004 had been applied and 005 had deleted rows before failing: all of it is undone.
    assert rows(url, "SELECT count(*) FROM app.users") == [(500,)]
    assert rows(url, "SELECT count(*) FROM app.songs") == [(500,)]
    assert rows(url, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'genre'") == [(0,)]
    history = rows(url, "SELECT version, success, error FROM migration_history ORDER BY id")
    assert [(v, s) for v, s, _ in history] == [(1, True), (2, True), (3, True), (5, False)]
    assert "syntax error" in history[-1][2]


def test_edited_applied_migration_is_refused_before_any_change(app_db):
    url, folder = app_db
    migrate(migrations_dir=str(folder), database_url=SecretStr(url))
    (folder / "001_create_users.sql").write_text("CREATE TABLE app.users (id int);\n")
    (folder / "004_more.sql").write_text("CREATE TABLE app.more (id int);\n")
    state = migrate(migrations_dir=str(folder), database_url=SecretStr(url), return_state=True)
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ValidationError) and "001_create_users.sql" in str(error)
    assert rows(url, "SELECT to_regclass('app.more')") == [(None,)]


def test_bad_migration_names_and_missing_database(tmp_path, pg_admin_url, scratch_db_name):
    (tmp_path / "first.sql").write_text("SELECT 1;")
    with pytest.raises(ValidationError, match="not a migration name"):
        discover(tmp_path)
    (tmp_path / "first.sql").unlink()
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "1_b.sql").write_text("SELECT 1;")
    with pytest.raises(ValidationError, match="version 1 is also"):
        discover(tmp_path)
    (tmp_path / "1_b.sql").unlink()
    state = migrate(
        migrations_dir=str(tmp_path),
        database_url=SecretStr(url_for(pg_admin_url, scratch_db_name)),
        return_state=True,
    )
    error = state.result(raise_on_failure=False)
    assert isinstance(error, DependencyError) and error.exit_code == 2 and "db init" in str(error)


def test_cli_status_and_exit_codes(app_db):
    url, folder = app_db
    dry = opsflow("db", "migrate", "--dir", str(folder), "--database-url", url, "--dry-run", "-q")
    assert dry.returncode == 10, dry.stderr
    status = opsflow("db", "status", "--dir", str(folder), "--database-url", url, "--json")
    assert status.returncode == 0 and '"pending": 3' in status.stdout
    (folder / "004_bad.sql").write_text("CREATE TABLE app.x (id int);\nCREATE TABLE app.x (id int);\n")
    failed = opsflow("db", "migrate", "--dir", str(folder), "--database-url", url, "-q")
    assert failed.returncode == 1 and "004_bad.sql:2" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert MigrationFailed.__name__  # the error type the message comes from
