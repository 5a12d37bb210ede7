"""`db backup`: create, list, verify by restoring (cached by checksum), restore, prune, kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from pydantic import SecretStr

from flows.maintenance.backup import backup_create, backup_prune, backup_restore, backup_verify
from flows.maintenance.backup_files import (
    Manifest,
    list_backups,
    parse_duration,
    select_prunable,
    write_manifest,
)
from flows.maintenance.record import ProcedureFailed
from tests.conftest import ROOT

from .conftest import opsflow

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture
def filled_db(scratch_db, tmp_path, monkeypatch):
    """A scratch database with two tables of rows, and a backup directory of the test's own."""
    monkeypatch.setenv("OPSFLOW_BACKUP_DIR", str(tmp_path / "backups"))
    with psycopg.connect(scratch_db) as conn:
        conn.execute("CREATE TABLE items (id serial PRIMARY KEY, name text)")
        conn.execute("INSERT INTO items (name) SELECT 'item ' || g FROM generate_series(1, 2000) g")
        conn.execute("CREATE SCHEMA app; CREATE TABLE app.notes (id int, body text)")
        conn.execute("INSERT INTO app.notes SELECT g, repeat('x', 50) FROM generate_series(1, 300) g")
        conn.execute("ALTER DATABASE " + scratch_db.rsplit("/", 1)[1] + " SET work_mem = '8MB'")
    return scratch_db, tmp_path / "backups"


def count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_create_verify_cached_restore(filled_db):
    url, folder = filled_db
    created = backup_create(label="test", database_url=SecretStr(url))
    details = created["details"]
    assert details["tables"] == {"app.notes": 300, "public.items": 2000} and created["rows"] == 2300
    manifests = list_backups(folder)
    assert [m.id for m in manifests] == [details["id"]] and manifests[0].sha256 == details["sha256"]
    assert not list(folder.rglob("*.partial"))

    first = backup_verify(database_url=SecretStr(url))
    assert first["exit_code"] == 0 and first["details"]["cached"] is False
    assert first["details"]["restored_rows"] == 2300
    second = backup_verify(database_url=SecretStr(url))
    assert second["details"]["cached"] is True and "proven earlier" in second["message"]
    forced = backup_verify(no_cache=True, database_url=SecretStr(url))
    assert forced["details"]["cached"] is False
    # No scratch database is left behind by verification.
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (name + "_verify%",)
        ).fetchall()
    assert left == []

    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM items WHERE id > 5")
        conn.execute("DROP TABLE app.notes")
    restored = backup_restore(backup="latest", database_url=SecretStr(url))
    assert restored["exit_code"] == 0 and restored["details"]["replaced"].startswith(name + "_pre_restore_")
    assert count(url, "items") == 2000 and count(url, "app.notes") == 300
    with psycopg.connect(url) as conn:
        settings = conn.execute("SHOW work_mem").fetchone()[0]
    assert settings == "8MB"  # database-level settings follow the restore
    aside = url.rsplit("/", 1)[0] + "/" + restored["details"]["replaced"]
    assert count(aside, "items") == 5  # the replaced state is kept, not lost


def test_tampered_backup_fails_verification_and_restore(filled_db):
    url, folder = filled_db
    created = backup_create(database_url=SecretStr(url))
    dump = folder / created["details"]["database"] / created["details"]["file"]
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    state = backup_verify(database_url=SecretStr(url), return_state=True)
    error = state.result(raise_on_failure=False)
    assert state.is_failed() and "checksum mismatch" in str(error)
    state = backup_restore(database_url=SecretStr(url), return_state=True)
    assert state.is_failed() and count(url, "items") == 2000


def test_verify_within_needs_a_recent_backup(filled_db):
    url, folder = filled_db
    state = backup_verify(within="24h", database_url=SecretStr(url), return_state=True)
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ProcedureFailed) and "no backup" in str(error)
    created = backup_create(database_url=SecretStr(url))
    manifest = Manifest.model_validate(created["details"])
    manifest.created_at = datetime.now(UTC) - timedelta(hours=30)
    write_manifest(folder / manifest.database, manifest)
    state = backup_verify(within="24h", database_url=SecretStr(url), return_state=True)
    assert "older than 24h" in str(state.result(raise_on_failure=False))
    assert backup_verify(within="48h", database_url=SecretStr(url))["exit_code"] == 0


def test_prune_keeps_the_newest_and_recent(filled_db):
    url, folder = filled_db
    ids = [backup_create(database_url=SecretStr(url))["details"]["id"] for _ in range(4)]
    for age, backup_id in zip((40, 35, 1), ids[:3], strict=True):
        manifest = next(m for m in list_backups(folder) if m.id == backup_id)
        manifest.created_at = datetime.now(UTC) - timedelta(days=age)
        write_manifest(folder / manifest.database, manifest)
    dry = backup_prune(keep_last=1, older_than="30d", dry_run=True, database_url=SecretStr(url))
    assert dry["exit_code"] == 10 and sorted(dry["details"]["removed"]) == sorted(ids[:2])
    assert len(list_backups(folder)) == 4
    done = backup_prune(keep_last=1, older_than="30d", database_url=SecretStr(url))
    assert sorted(done["details"]["removed"]) == sorted(ids[:2])
    assert sorted(m.id for m in list_backups(folder)) == sorted(ids[2:])
    assert backup_prune(keep_last=1, older_than="30d", database_url=SecretStr(url))["rows"] == 0


def test_prune_selection_rules():
    now = datetime.now(UTC)

    def manifest(name: str, days: float, database: str = "db") -> Manifest:
        return Manifest(
            id=name,
            database=database,
            server="s",
            created_at=now - timedelta(days=days),
            file=name + ".dump",
            size=1,
            sha256="0",
            duration=0,
        )

    backups = [
        manifest("a", 1),
        manifest("b", 10),
        manifest("c", 40),
        manifest("d", 50),
        manifest("x", 90, "other"),
    ]
    assert [m.id for m in select_prunable(backups, keep_last=2, older_than=timedelta(days=30), now=now)] == [
        "c",
        "d",
    ]
    assert [m.id for m in select_prunable(backups, keep_last=3, older_than=None, now=now)] == ["d"]
    with pytest.raises(Exception, match="at least 1"):
        select_prunable(backups, keep_last=0, older_than=None)
    assert parse_duration("36h") == timedelta(hours=36) and parse_duration("7") == timedelta(days=7)
    with pytest.raises(Exception, match="not a duration"):
        parse_duration("soon")


def test_killed_backup_is_never_listed(filled_db, monkeypatch):
    """SIGKILL the CLI while pg_dump writes: no manifest, so nothing counts as a backup."""
    url, folder = filled_db
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 400000) g")
    env = dict(os.environ, OPSFLOW_BACKUP_DIR=str(folder))
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.batch", "db", "backup", "create", "--database-url", url, "-q"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(folder.rglob("*.partial")):
        time.sleep(0.01)
    assert list(folder.rglob("*.partial")), "pg_dump never started writing"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list_backups(folder) == []
    listed = opsflow("db", "backup", "list", "--database-url", url, "--json", env=env)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_cli_backup_commands(filled_db):
    url, folder = filled_db
    env = dict(os.environ, OPSFLOW_BACKUP_DIR=str(folder))
    created = opsflow("db", "backup", "create", "--database-url", url, "--json", "-q", env=env)
    assert created.returncode == 0, created.stderr
    backup_id = json.loads(created.stdout)["details"]["id"]
    listed = opsflow("db", "backup", "list", "--database-url", url, env=env)
    assert backup_id in listed.stdout
    dry = opsflow(
        "db", "backup", "restore", backup_id[:-4], "--dry-run", "--database-url", url, "-q", env=env
    )
    assert dry.returncode == 10 and "would restore" in dry.stdout
    missing = opsflow("db", "backup", "verify", "nosuch", "--database-url", url, "-q", env=env)
    assert missing.returncode == 3 and "no backup" in missing.stderr
    bad = opsflow("db", "backup", "prune", "--keep-last", "0", "--database-url", url, env=env)
    assert bad.returncode == 3
