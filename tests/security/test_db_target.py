"""The maintenance target is never opsflow's own records database.

With both `OPSFLOW_DATABASE_URL` (the records) and `OPSFLOW_TARGET_DATABASE_URL` set, every
procedure once acted on the records database: a failing migration "restored" it and renamed
the live one aside. Now the target reads only `OPSFLOW_TARGET_DATABASE_URL`, `DATABASE_URL`
and `--database-url`, and the procedures that write to it refuse the records database (exit 3).

Spelling the records server otherwise (`:05432`, `0x7f000001`, `[::ffff:127.0.0.1]`, `PGHOSTADDR`
over the URL's host, another name of the machine) once passed that check and `db migrate` dropped
a records table: the URLs are now read as libpq reads them, and the server is asked who it is.
All of it on real PostgreSQL databases of the test's own and the session's Prefect server.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest
from pydantic import SecretStr

from flows.batch import main
from flows.errors import ValidationError
from flows.maintenance import guard
from flows.maintenance.audit import enable_audit_trail
from flows.maintenance.backup import backup_create, backup_restore
from flows.maintenance.housekeeping import analyze_tables, purge_soft_deleted
from flows.maintenance.init import init_database
from flows.maintenance.migrate import migrate, migration_status
from flows.maintenance.pg import Target
from flows.maintenance.settings import load_settings
from flows.maintenance.verify import extensions, setup
from flows.records import db as records_store
from tests.conftest import ROOT
from tests.maintenance.conftest import url_for

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_api")]

# Rows soft-deleted long ago: what `purge` would remove from whichever database it is aimed at.
NOTES = """
CREATE TABLE notes (id serial PRIMARY KEY, body text, deleted_at timestamptz);
INSERT INTO notes (body, deleted_at) SELECT 'old ' || g, now() - interval '200 days'
FROM generate_series(1, 40) g;
"""


def rows(url: str, query: str) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else []


def regclass(url: str, name: str) -> str | None:
    return rows(url, f"SELECT to_regclass('{name}')::text")[0][0]


def databases(admin_url: str, prefix: str) -> list[str]:
    found = rows(admin_url, f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%' ORDER BY 1")
    return [name for (name,) in found]


@pytest.fixture
def records_db(pg_admin_url, scratch_db_name, tmp_path, monkeypatch):
    """A PostgreSQL records database (OPSFLOW_DATABASE_URL) holding its tables; backups of the test's own."""
    name = f"{scratch_db_name}_records"
    rows(pg_admin_url, f'CREATE DATABASE "{name}"')
    url = url_for(pg_admin_url, name)
    monkeypatch.setenv("OPSFLOW_DATABASE_URL", url)
    monkeypatch.setenv("OPSFLOW_BACKUP_DIR", str(tmp_path / "backups"))
    for unset in ("OPSFLOW_TARGET_DATABASE_URL", "DATABASE_URL"):
        monkeypatch.delenv(unset, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env.<environment> of the checkout is read
    records_store.dispose_engines()
    records_store.get_engine()  # the record tables, as any opsflow command creates them
    try:
        yield url
    finally:
        records_store.dispose_engines()


def test_the_records_url_is_never_the_target(records_db, tmp_path, monkeypatch):
    assert load_settings().database_url is None  # OPSFLOW_DATABASE_URL alone gives no target
    (tmp_path / ".env.production").write_text(f"OPSFLOW_DATABASE_URL={records_db}\n")
    assert load_settings("production").database_url is None
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.internal/app")
    assert load_settings().require_database() == "postgresql://app@db.internal/app"
    monkeypatch.setenv("OPSFLOW_TARGET_DATABASE_URL", "postgresql://ops@db.internal/shop")
    assert load_settings().require_database() == "postgresql://ops@db.internal/shop"
    assert load_settings(database_url=SecretStr("postgresql://cli@h/x")).require_database() == (
        "postgresql://cli@h/x"
    )
    assert records_store.database_url().endswith("/" + records_db.rsplit("/", 1)[1])  # records stay put


def test_each_procedure_acts_on_the_target_with_both_urls_set(
    records_db, pg_admin_url, scratch_db_name, tmp_path, monkeypatch
):
    target = url_for(pg_admin_url, scratch_db_name)
    monkeypatch.setenv("OPSFLOW_TARGET_DATABASE_URL", target)
    folder = tmp_path / "migrations"
    shutil.copytree(ROOT / "deployments" / "migrations", folder)
    monkeypatch.setenv("OPSFLOW_MIGRATIONS_DIR", str(folder))
    assert load_settings().require_database() == target

    assert init_database()["exit_code"] == 0
    assert rows(target, "SELECT nspname FROM pg_namespace WHERE nspname = 'app'") == [("app",)]

    status = migration_status(load_settings())
    assert status["database"].endswith("/" + scratch_db_name) and status["pending"] == 3

    done = migrate()
    assert done["exit_code"] == 0 and [m["version"] for m in done["details"]["applied"]] == [1, 2, 3]
    assert regclass(target, "app.songs") == "app.songs"
    assert len(rows(target, "SELECT 1 FROM migration_history")) == 3

    rows(
        target,
        "INSERT INTO app.users (email) VALUES ('a@example.com');"
        "INSERT INTO app.songs (user_id, title, deleted_at) SELECT 1, 'old ' || g, now() - interval '200 days'"
        " FROM generate_series(1, 25) g",
    )
    purged = purge_soft_deleted(table="app.songs", older_than="90d")
    assert purged["exit_code"] == 0 and purged["rows"] == 25
    assert rows(target, "SELECT count(*) FROM app.songs") == [(0,)]

    backup = backup_create(label="both-set")["details"]
    assert backup["database"] == scratch_db_name
    rows(target, "INSERT INTO app.users (email) VALUES ('after-backup@example.com')")
    restored = backup_restore(backup=backup["id"])
    assert restored["exit_code"] == 0
    assert rows(target, "SELECT email FROM app.users ORDER BY id") == [("a@example.com",)]

    # The records database was only written to as the records: no migration, purge or swap there.
    for name in ("migration_history", "audit_log", "app.songs"):
        assert regclass(records_db, name) is None, name
    assert rows(records_db, "SELECT nspname FROM pg_namespace WHERE nspname = 'app'") == []
    assert databases(pg_admin_url, f"{scratch_db_name}_records") == [f"{scratch_db_name}_records"]
    logged = rows(records_db, "SELECT script_name, parameters::text FROM script_execution_log ORDER BY id")
    assert [n for n, _ in logged] == [
        "db-init",
        "db-migrate",
        "db-backup-create",  # migrate's own backup first
        "db-purge",
        "db-backup-create",
        "db-backup-restore",
    ]
    assert all(scratch_db_name in p and f"{scratch_db_name}_records" not in p for _, p in logged)


def _refused(state) -> ValidationError:
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ValidationError), error
    assert error.exit_code == 3
    text = str(error)
    assert "OPSFLOW_TARGET_DATABASE_URL" in text and "OPSFLOW_DATABASE_URL" in text, text
    assert "records database" in text and "\n" not in text
    return error


# Each procedure that writes to the target, by its flow and its command line.
WRITERS = {
    "init": (lambda: init_database(return_state=True), ["db", "init"]),
    "migrate": (lambda: migrate(return_state=True), ["db", "migrate"]),
    "extensions": (lambda: extensions(return_state=True), ["db", "extensions"]),
    "setup": (lambda: setup(return_state=True), ["db", "setup"]),
    "restore": (
        lambda: backup_restore(backup="latest", return_state=True),
        ["db", "backup", "restore", "latest"],
    ),
    "purge": (
        lambda: purge_soft_deleted(table="notes", older_than="90d", return_state=True),
        ["db", "purge", "notes", "--older-than", "90d"],
    ),
    "audit-enable": (
        lambda: enable_audit_trail(tables=["notes"], return_state=True),
        ["db", "audit", "enable", "notes"],
    ),
}


@pytest.mark.parametrize("procedure", list(WRITERS))
def test_writing_procedures_refuse_the_records_database(
    procedure, records_db, pg_admin_url, scratch_db_name, tmp_path, monkeypatch, capsys
):
    rows(records_db, NOTES)
    folder = tmp_path / "migrations"
    shutil.copytree(ROOT / "deployments" / "migrations", folder)
    monkeypatch.setenv("OPSFLOW_MIGRATIONS_DIR", str(folder))
    name = f"{scratch_db_name}_records"
    # The same database spelled otherwise: another scheme, host alias, the default port left out.
    monkeypatch.setenv("OPSFLOW_TARGET_DATABASE_URL", f"postgresql+psycopg://postgres@localhost/{name}")
    # A backup of the records database may be taken (it changes nothing); restoring it is refused.
    assert backup_create(label="records")["exit_code"] == 0

    run_flow, command = WRITERS[procedure]
    _refused(run_flow())

    with pytest.raises(SystemExit) as done:
        main(command)
    assert done.value.code == 3
    errors = [line for line in capsys.readouterr().err.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "OPSFLOW_DATABASE_URL" in errors[0] and "refused" in errors[0], errors

    # Given on the command line, with the records' own URL, it is refused all the same.
    with pytest.raises(SystemExit) as done:
        main([*command, "--database-url", records_db])
    assert done.value.code == 3

    assert rows(records_db, "SELECT count(*) FROM notes") == [(40,)]
    for table in ("migration_history", "audit_log"):
        assert regclass(records_db, table) is None, table
    assert rows(records_db, "SELECT nspname FROM pg_namespace WHERE nspname = 'app'") == []
    assert rows(records_db, "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == [(0,)]
    assert databases(pg_admin_url, name) == [name]  # not swapped aside


def test_read_only_procedures_may_read_the_records_database(records_db, monkeypatch):
    monkeypatch.setenv("OPSFLOW_TARGET_DATABASE_URL", records_db)
    monkeypatch.setenv("OPSFLOW_MIGRATIONS_DIR", str(ROOT / "deployments" / "migrations"))
    rows(records_db, NOTES)
    assert migration_status(load_settings())["pending"] == 3
    assert analyze_tables(tables=["notes"])["exit_code"] == 0
    assert backup_create(label="records")["exit_code"] == 0
    assert rows(records_db, "SELECT count(*) FROM notes") == [(40,)]


# --- Other spellings of the same server ------------------------------------------------------
# Each reached the records database on the old URL comparison, and `db migrate` dropped a records
# table there. {db} is the records database's name; the server is the test's 127.0.0.1:5432.
SPELLINGS = {
    "port-leading-zero": ("postgresql://postgres@127.0.0.1:05432/{db}", {}),
    "port-plus-sign": ("postgresql://postgres@127.0.0.1:+5432/{db}", {}),
    "PGPORT-leading-zero": ("postgresql://postgres@127.0.0.1/{db}", {"PGPORT": "05432"}),
    "decimal-address": ("postgresql://postgres@2130706433/{db}", {}),
    "hex-address": ("postgresql://postgres@0x7f000001/{db}", {}),
    "octal-address": ("postgresql://postgres@0177.0.0.1/{db}", {}),
    "short-address": ("postgresql://postgres@127.1:5432/{db}", {}),
    "unspecified-address": ("postgresql://postgres@0.0.0.0/{db}", {}),
    "zero": ("postgresql://postgres@0/{db}", {}),
    "v4-mapped-v6": ("postgresql://postgres@[::ffff:127.0.0.1]/{db}", {}),
    "conninfo-hex-and-port": ("host=0x7f000001 port=05432 dbname={db} user=postgres", {}),
    "conninfo-decimal": ("host=2130706433 dbname={db} user=postgres", {}),
    "conninfo-v4-mapped": ("host=::ffff:127.0.0.1 port=+5432 dbname={db} user=postgres", {}),
    "conninfo-zero": ("host=0 dbname={db} user=postgres", {}),
    "PGHOSTADDR-over-host": (
        "postgresql://postgres@records-elsewhere.invalid/{db}",
        {"PGHOSTADDR": "127.0.0.1"},
    ),
    "hostaddr-over-host": ("postgresql://postgres@records-elsewhere.invalid/{db}?hostaddr=127.0.0.1", {}),
    "PGHOST-hex": ("postgresql:///{db}", {"PGHOST": "0x7f000001"}),
    "second-of-two-hosts": ("postgresql://postgres@records-elsewhere.invalid:5432,0x7f000001:05432/{db}", {}),
}

# A hostile migration: what the records database lost when the guard was passed.
DROP_A_RECORDS_TABLE = "DROP TABLE dead_letter_queue;\n"


@pytest.fixture
def hostile_migrations(tmp_path, monkeypatch):
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "001_drop_records.sql").write_text(DROP_A_RECORDS_TABLE)
    monkeypatch.setenv("OPSFLOW_MIGRATIONS_DIR", str(folder))
    return folder


def records_intact(records_url: str, admin_url: str) -> None:
    assert regclass(records_url, "dead_letter_queue") == "dead_letter_queue"
    assert regclass(records_url, "migration_history") is None
    name = records_url.rsplit("/", 1)[1]
    assert databases(admin_url, name) == [name]


def refused_on_the_command_line(command: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(command)
    errors = [line for line in capsys.readouterr().err.splitlines() if "[ERROR]" in line]
    assert done.value.code == 3, errors
    assert len(errors) == 1 and "refused" in errors[0], errors
    assert "OPSFLOW_TARGET_DATABASE_URL" in errors[0] and "OPSFLOW_DATABASE_URL" in errors[0]
    return errors[0]


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_every_spelling_of_the_records_server_is_refused(
    spelling, records_db, pg_admin_url, hostile_migrations, monkeypatch, capsys
):
    url, environment = SPELLINGS[spelling]
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    name = records_db.rsplit("/", 1)[1]
    monkeypatch.setenv("OPSFLOW_TARGET_DATABASE_URL", url.format(db=name))
    refused_on_the_command_line(["db", "migrate"], capsys)
    records_intact(records_db, pg_admin_url)


def test_a_spelling_is_refused_by_the_flow_itself(records_db, pg_admin_url, hostile_migrations, monkeypatch):
    """A deployment run has no command line in front: the flow refuses on its own."""
    name = records_db.rsplit("/", 1)[1]
    monkeypatch.setenv("PGHOSTADDR", "127.0.0.1")
    monkeypatch.setenv(
        "OPSFLOW_TARGET_DATABASE_URL", f"postgresql://postgres@records-elsewhere.invalid/{name}"
    )
    _refused(migrate(return_state=True))
    records_intact(records_db, pg_admin_url)


def _names_of_loopback() -> list[str]:
    names = [socket.gethostname(), socket.getfqdn(), "localhost.localdomain"]
    hosts = Path("/etc/hosts")
    if hosts.is_file():
        for line in hosts.read_text().splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) > 1 and fields[0].startswith(("127.", "::1")):
                names += fields[1:]
    return list(dict.fromkeys(names))


@pytest.fixture(scope="module")
def server_alias(pg_admin_url) -> str:
    """Another name of the test's PostgreSQL server that the URL check cannot see through (the
    machine's host name, an /etc/hosts alias of a loopback address): only the server can say."""
    admin = psycopg.conninfo.conninfo_to_dict(pg_admin_url)
    for name in _names_of_loopback():
        if name.split(".")[0] in {"localhost", "ip6-localhost", "ip6-loopback"}:
            continue  # recognised by spelling
        try:
            with psycopg.connect(**{**admin, "host": name}, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            continue
        return name
    pytest.skip("no other name of this machine reaches the test's PostgreSQL server")


def test_a_host_alias_is_refused_by_what_the_server_says(
    records_db, pg_admin_url, server_alias, hostile_migrations, monkeypatch, capsys
):
    name = records_db.rsplit("/", 1)[1]
    alias_url = f"postgresql://postgres@{server_alias}:5432/{name}"
    # The URLs differ, so only the connection can tell.
    assert not guard.same_database(dict(Target.from_url(alias_url).params), guard.records_parameters())
    monkeypatch.setenv("OPSFLOW_TARGET_DATABASE_URL", alias_url)
    refused_on_the_command_line(["db", "migrate"], capsys)
    records_intact(records_db, pg_admin_url)


@pytest.mark.parametrize("procedure", list(WRITERS))
def test_every_writing_flow_asks_the_server(
    procedure, records_db, pg_admin_url, server_alias, tmp_path, monkeypatch
):
    rows(records_db, NOTES)
    name = records_db.rsplit("/", 1)[1]
    monkeypatch.setenv("OPSFLOW_TARGET_DATABASE_URL", f"postgresql://postgres@{server_alias}/{name}")
    folder = tmp_path / "migrations"
    shutil.copytree(ROOT / "deployments" / "migrations", folder)
    monkeypatch.setenv("OPSFLOW_MIGRATIONS_DIR", str(folder))
    run_flow, _ = WRITERS[procedure]
    _refused(run_flow())
    assert rows(records_db, "SELECT count(*) FROM notes") == [(40,)]
    for table in ("migration_history", "audit_log"):
        assert regclass(records_db, table) is None, table
    assert rows(records_db, "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == [(0,)]
    assert databases(pg_admin_url, name) == [name]


def test_a_copy_of_the_records_database_holds_its_id_and_is_refused(
    records_db, pg_admin_url, server_alias, hostile_migrations, monkeypatch, capsys
):
    name = records_db.rsplit("/", 1)[1]
    copy = f"{name}_copy"
    records_store.dispose_engines()  # a template may have no sessions
    rows(pg_admin_url, f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')
    monkeypatch.setenv("OPSFLOW_TARGET_DATABASE_URL", f"postgresql://postgres@{server_alias}/{copy}")
    line = refused_on_the_command_line(["db", "migrate"], capsys)
    assert "copy" in line
    assert regclass(url_for(pg_admin_url, copy), "dead_letter_queue") == "dead_letter_queue"


def test_other_databases_of_the_same_server_stay_allowed(
    records_db, pg_admin_url, scratch_db_name, server_alias, tmp_path, monkeypatch
):
    """The records and the target may share a server, even spelled alike, as long as they are
    two databases; another opsflow's records database (another id) is an ordinary target."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_notes.sql").write_text("CREATE TABLE maintained (id int);\n")
    monkeypatch.setenv("OPSFLOW_MIGRATIONS_DIR", str(folder))
    rows(pg_admin_url, f'CREATE DATABASE "{scratch_db_name}"')
    other = f"{scratch_db_name}_other_records"
    rows(pg_admin_url, f'CREATE DATABASE "{other}"')
    engine = records_store.make_engine(url_for(pg_admin_url, other))
    try:
        records_store.create_tables(engine)  # its own instance id
    finally:
        engine.dispose()
    for host, database in (
        ("127.0.0.1", scratch_db_name),
        (server_alias, other),
        ("0x7f000001", scratch_db_name),
    ):
        url = f"postgresql://postgres@{host}:5432/{database}"
        monkeypatch.setenv("OPSFLOW_TARGET_DATABASE_URL", url)
        done = migrate(backup=False)
        assert done["exit_code"] == 0, done
        assert regclass(url_for(pg_admin_url, database), "maintained") == "maintained"
    records_intact(records_db, pg_admin_url)


def test_the_procedure_writes_where_the_check_looked(records_db, pg_admin_url, scratch_db_name, server_alias):
    """The checked target is pinned to the address that answered, for the procedure and its tools."""
    rows(pg_admin_url, f'CREATE DATABASE "{scratch_db_name}"')
    url = f"postgresql://postgres@{server_alias}/{scratch_db_name}"
    settings = load_settings(database_url=SecretStr(url))
    checked = guard.verified_target(guard.writable_target(settings, "db migrate"), settings, "db migrate")
    assert checked.get("hostaddr") == "127.0.0.1" and checked.get("host") == server_alias
    assert checked.get("port") == "5432" and checked.dbname == scratch_db_name


# --- A migration runs the SQL its checksum is of ---------------------------------------------


def test_a_migration_rewritten_while_earlier_ones_run_is_not_what_runs(
    pg_admin_url, scratch_db_name, tmp_path, monkeypatch
):
    """psql once re-read each file by path after Python hashed it: a file rewritten while an
    earlier migration ran was applied under the reviewed file's checksum."""
    rows(pg_admin_url, f'CREATE DATABASE "{scratch_db_name}"')
    target = url_for(pg_admin_url, scratch_db_name)
    monkeypatch.setenv("OPSFLOW_TARGET_DATABASE_URL", target)
    folder = tmp_path / "migrations"
    folder.mkdir()
    gate = secrets.randbelow(2**31)
    # The first migration waits for a lock this test holds: the window, without any timing.
    (folder / "001_wait.sql").write_text(
        f"SELECT pg_advisory_lock({gate});\nSELECT pg_advisory_unlock({gate});\nCREATE TABLE first (id int);\n"
    )
    reviewed = "CREATE TABLE reviewed (id int);\n"
    (folder / "002_reviewed.sql").write_text(reviewed)
    monkeypatch.setenv("OPSFLOW_MIGRATIONS_DIR", str(folder))

    outcome: dict = {}
    with psycopg.connect(target, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (gate,))
        runner = threading.Thread(
            target=lambda: outcome.update(state=migrate(backup=False, return_state=True))
        )
        runner.start()
        deadline = time.monotonic() + 120
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND NOT granted"
        while holder.execute(waiting, (gate,)).fetchone()[0] == 0:
            assert runner.is_alive() and time.monotonic() < deadline, "migration 001 never reached its lock"
            time.sleep(0.05)
        (folder / "002_reviewed.sql").write_text("CREATE TABLE swapped (id int);\n")
        holder.execute("SELECT pg_advisory_unlock(%s)", (gate,))
    runner.join(timeout=300)
    assert not runner.is_alive() and outcome["state"].is_completed(), outcome

    assert regclass(target, "first") == "first"
    assert regclass(target, "swapped") is None  # the rewritten file did not run
    assert regclass(target, "reviewed") == "reviewed"  # what was hashed did
    recorded = rows(target, "SELECT checksum FROM migration_history WHERE success AND version = 2")
    assert recorded == [(hashlib.sha256(reviewed.encode()).hexdigest(),)]
    # ...and the file that differs now is reported as changed, so the next run refuses it.
    assert migration_status(load_settings())["changed"] == [2]


def test_migrations_run_from_a_private_copy(pg_admin_url, scratch_db_name, tmp_path, monkeypatch):
    """The copy psql reads is in a directory only this user can enter, and is gone afterwards."""
    rows(pg_admin_url, f'CREATE DATABASE "{scratch_db_name}"')
    target = url_for(pg_admin_url, scratch_db_name)
    monkeypatch.setenv("OPSFLOW_TARGET_DATABASE_URL", target)
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_first.sql").write_text("CREATE TABLE first (id int);\n")
    (folder / "002_broken.sql").write_text("SELECT 1;\nSELEC oops;\n")
    monkeypatch.setenv("OPSFLOW_MIGRATIONS_DIR", str(folder))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    state = migrate(backup=False, return_state=True)
    error = state.result(raise_on_failure=False)
    message = str(error)
    assert f"{folder / '002_broken.sql'}:2" in message, message  # file:line of the migration itself
    assert str(tmp) not in message
    assert list(tmp.iterdir()) == []  # the private copies are removed


# --- Durations that no calendar holds ---------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["db", "purge", "t1", "--older-than", "999999999999d"],
        ["db", "purge", "t1", "--older-than", "99999999d"],  # fits Python, not PostgreSQL's calendar
        ["db", "backup", "prune", "--older-than", "999999999999d"],
        ["db", "backup", "verify", "--within", "999999999999d"],
        ["cleanup", "--older-than", "999999999999d"],
    ],
)
def test_a_duration_too_long_for_the_calendar_is_one_line_and_exit_3(
    command, pg_admin_url, scratch_db_name, monkeypatch, capsys
):
    rows(pg_admin_url, f'CREATE DATABASE "{scratch_db_name}"')
    target = url_for(pg_admin_url, scratch_db_name)
    rows(target, "CREATE TABLE t1 (id int, deleted_at timestamptz); INSERT INTO t1 VALUES (1, now())")
    monkeypatch.setenv("OPSFLOW_TARGET_DATABASE_URL", target)
    with pytest.raises(SystemExit) as done:
        main(command)
    errors = [line for line in capsys.readouterr().err.splitlines() if "ERROR" in line or "Error" in line]
    assert done.value.code == 3, errors
    assert len(errors) == 1 and "36500d" in errors[0], errors
    assert rows(target, "SELECT count(*) FROM t1") == [(1,)]
