"""Procedures that write to the target never run against opsflow's own records database.

The target (`OPSFLOW_TARGET_DATABASE_URL`, `DATABASE_URL`, `--database-url`) and the records
database (`OPSFLOW_DATABASE_URL`) are separate settings, but nothing stops both from naming one
database: `migrate` would then restore the records over a failed migration, `purge` delete them,
`backup restore` swap them out. Procedures that change the target's schema or data refuse that
(exit 3) before they touch anything; read-only ones (status, verify, analyze, backups) may run.

Two URLs name the same database when they reach the same host and port and name the same
database, whatever their spelling: `postgres://`, `postgresql://` and `postgresql+psycopg://`
are one scheme, an absent port is 5432 (or `PGPORT`), an absent host is the local server, and
`localhost`, any `127.x.x.x`, `::1` and a Unix-socket directory are all this machine. Other
host names are compared as written (no DNS look-up: `db.internal` and its address differ).
"""

from __future__ import annotations

import getpass
import os

import psycopg
from psycopg.conninfo import conninfo_to_dict

from flows.errors import ValidationError
from flows.maintenance.pg import Target
from flows.maintenance.settings import MaintenanceSettings

#: Flows (module:function) that change the target's schema or data, by the command that runs them.
WRITING_PROCEDURES = {
    "flows.maintenance.init:init_database": "db init",
    "flows.maintenance.migrate:migrate": "db migrate",
    "flows.maintenance.verify:extensions": "db extensions",
    "flows.maintenance.verify:setup": "db setup",
    "flows.maintenance.backup:backup_restore": "db backup restore",
    "flows.maintenance.housekeeping:purge_soft_deleted": "db purge",
    "flows.maintenance.audit:enable_audit_trail": "db audit enable",
}

_THIS_MACHINE = "localhost"


def _host(name: str) -> str:
    host = name.strip().lower().strip("[]")
    if not host or host.startswith(("/", "@")) or host in {"localhost", "::1", "0:0:0:0:0:0:0:1"}:
        return _THIS_MACHINE  # a Unix socket (or libpq's default, which is one) is this machine too
    if host.startswith("127.") and host.replace(".", "").isdigit():
        return _THIS_MACHINE
    return host


def endpoints(params: dict[str, str]) -> set[tuple[str, str]]:
    """The (host, port) pairs a libpq connection with `params` may reach, normalised."""
    hosts = (
        params.get("hostaddr")
        or params.get("host")
        or os.environ.get("PGHOSTADDR")
        or os.environ.get("PGHOST")
        or ""
    ).split(",")
    ports = (params.get("port") or os.environ.get("PGPORT") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return {(_host(h), p.strip() or "5432") for h, p in zip(hosts, ports, strict=False)}


def database_name(params: dict[str, str]) -> str:
    """The database libpq connects to: dbname, else PGDATABASE, else the user's name."""
    return (
        params.get("dbname")
        or os.environ.get("PGDATABASE")
        or params.get("user")
        or os.environ.get("PGUSER")
        or getpass.getuser()
    )


def same_database(a: dict[str, str], b: dict[str, str]) -> bool:
    """Whether two libpq parameter sets reach the same database of the same server."""
    return database_name(a) == database_name(b) and bool(endpoints(a) & endpoints(b))


def records_parameters() -> dict[str, str] | None:
    """The records database's libpq parameters, or None when it is not PostgreSQL (SQLite)."""
    from flows.records.db import database_url

    url = database_url()
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgres"):
        return None
    try:
        return {k: str(v) for k, v in conninfo_to_dict("postgresql://" + rest).items()}
    except psycopg.ProgrammingError:
        return None  # not a URL libpq understands: it cannot be the target either


def refuse_records_database(target: Target, procedure: str) -> None:
    """Raise `ValidationError` (exit 3) when `target` is opsflow's records database."""
    records = records_parameters()
    if records is not None and same_database(dict(target.params), records):
        raise ValidationError(
            f"{procedure} refused: its target {target} (OPSFLOW_TARGET_DATABASE_URL, DATABASE_URL or "
            "--database-url) is opsflow's own records database (OPSFLOW_DATABASE_URL) — point the "
            "target at the application's database"
        )


def writable_target(settings: MaintenanceSettings, procedure: str) -> Target:
    """The target of a procedure that changes it: configured, valid, and not the records database."""
    target = Target.from_url(settings.require_database())
    refuse_records_database(target, procedure)
    return target
