"""Procedures that write to the target never run against opsflow's own records database.

The target (`OPSFLOW_TARGET_DATABASE_URL`, `DATABASE_URL`, `--database-url`) and the records
database (`OPSFLOW_DATABASE_URL`) are separate settings, but nothing stops both from naming one
database: `migrate` would then restore the records over a failed migration, `purge` delete them,
`backup restore` swap them out. Procedures that change the target's schema or data refuse that
(exit 3) before they touch anything; read-only ones (status, verify, analyze, backups) may run.

A URL can name one server in endless ways (numeric address forms, host aliases, DNS names,
`service=` entries, `PGHOSTADDR`), so spelling is only the first, cheap check:

1. `writable_target` (no connection): the same database name at the same host and port once both
   URLs are read as libpq reads them. Ports are numbers (`05432` and `+5432` are 5432; absent is
   `PGPORT`, else 5432); the address libpq connects to is `hostaddr` (or `PGHOSTADDR`) when given,
   else `host` (or `PGHOST`); hosts are parsed as addresses the way the resolver does
   (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`, `[::ffff:127.0.0.1]`), and any loopback,
   unspecified (`0.0.0.0`, `0`, `::`) or own-interface address, `localhost`, and a Unix socket are
   all this machine. Names are not resolved here.
2. `verified_target` (by connection, before the procedure's first change): the guard connects to
   the target exactly as the procedure would and asks who answers. Refused when the target holds
   the records database's instance id (`opsflow_instance`, written when the record tables are
   created: it is the records database or a copy of it), or when the server reports the same
   database: same database oid, postmaster start time and port, and the same system identifier
   where the role may read it. Two databases of one server differ by oid and stay allowed. The
   target the procedure then uses is pinned to the address that answered (`hostaddr`), so a name
   that resolves elsewhere a moment later cannot redirect it.

With SQLite records there is nothing to compare: no PostgreSQL target can be an SQLite file.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from flows.errors import DependencyError, OpsflowError, ValidationError
from flows.maintenance.pg import Target, connect, ident, scrub
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

THIS_MACHINE = "this machine"
DEFAULT_PORT = 5432
_SETTINGS = "(OPSFLOW_TARGET_DATABASE_URL, DATABASE_URL or --database-url)"
_WAY_OUT = "point the target at the application's database"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> Address | None:
    """The IP address `text` stands for as the resolver reads a numeric host, or None for a name."""
    text = text.strip().strip("[]").split("%", 1)[0]  # brackets and an IPv6 zone (`%eth0`)
    try:
        address: Address = ipaddress.ip_address(text)
    except ValueError:
        try:
            # inet_aton's forms, which glibc's getaddrinfo (so libpq) accepts as addresses too.
            address = ipaddress.IPv4Address(socket.inet_aton(text))
        except (OSError, ValueError):
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address


def is_this_machine(address: Address) -> bool:
    """Loopback, unspecified (a connection to it reaches this machine) or one of its interfaces'."""
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        # Binding succeeds only to an address this machine holds; nothing is sent.
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


def normal_host(name: str) -> str:
    """A host as compared: `THIS_MACHINE`, an address in its canonical form, or a lower-case name."""
    host = name.strip().lower()
    if not host or host.startswith(("/", "@")):
        return THIS_MACHINE  # a Unix socket (libpq's default is one)
    address = parse_address(host)
    if address is not None:
        return THIS_MACHINE if is_this_machine(address) else str(address)
    host = host.strip("[]").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return THIS_MACHINE
    return host


def normal_port(text: str) -> int | str:
    """A port as libpq reads it (a base-10 number, sign and leading zeros allowed); empty is 5432."""
    text = text.strip()
    if not text:
        return DEFAULT_PORT
    try:
        return int(text)
    except ValueError:
        return text  # libpq refuses it: such a URL connects nowhere


def _setting(params: Mapping[str, str], key: str, variable: str, environ: Mapping[str, str]) -> str:
    # libpq takes the environment's value only when the parameter is absent (an empty one stays).
    return params[key] if key in params else environ.get(variable, "")


def endpoints(
    params: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> set[tuple[str, int | str]]:
    """The (host, port) pairs a libpq connection with `params` may reach, normalised."""
    env = os.environ if environ is None else environ
    hosts = _setting(params, "host", "PGHOST", env).split(",")
    addresses = _setting(params, "hostaddr", "PGHOSTADDR", env).split(",")
    ports = _setting(params, "port", "PGPORT", env).split(",")
    found = set()
    for i in range(max(len(hosts), len(addresses))):
        host = hosts[i] if i < len(hosts) else ""
        address = addresses[i] if i < len(addresses) else ""
        port = ports[0] if len(ports) == 1 else (ports[i] if i < len(ports) else "")
        # libpq connects to hostaddr when there is one; host then only names the server.
        found.add((normal_host(address if address.strip() else host), normal_port(port)))
    return found


def database_name(params: Mapping[str, str], environ: Mapping[str, str] | None = None) -> str:
    """The database libpq connects to: dbname, else PGDATABASE, else the user's name."""
    env = os.environ if environ is None else environ
    return (
        params.get("dbname")
        or env.get("PGDATABASE")
        or params.get("user")
        or env.get("PGUSER")
        or getpass.getuser()
    )


def same_database(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Whether two libpq parameter sets reach the same database of the same server, by spelling."""
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


def _refusal(procedure: str, target: Target, why: str) -> ValidationError:
    return ValidationError(f"{procedure} refused: its target {target} {_SETTINGS} {why} — {_WAY_OUT}")


def refuse_records_database(target: Target, procedure: str) -> None:
    """Raise `ValidationError` (exit 3) when `target` is spelled as the records database."""
    records = records_parameters()
    if records is not None and same_database(dict(target.params), records):
        raise _refusal(procedure, target, "is opsflow's own records database (OPSFLOW_DATABASE_URL)")


def writable_target(settings: MaintenanceSettings, procedure: str) -> Target:
    """The target of a procedure that changes it: configured, valid, and not spelled as the
    records database. The procedure calls `verified_target` on it before its first change."""
    target = Target.from_url(settings.require_database())
    refuse_records_database(target, procedure)
    return target


@dataclass(frozen=True)
class ServerDatabase:
    """Which database of which running server a connection reached, as the server says."""

    oid: int
    name: str
    started: datetime
    port: str
    system_identifier: int | None

    def same_as(self, other: ServerDatabase) -> bool:
        # The system identifier alone would confuse a server with its replicas and clones, and
        # the database name alone two servers; the start time, port and oid together do not.
        if None not in (self.system_identifier, other.system_identifier) and (
            self.system_identifier != other.system_identifier
        ):
            return False
        return (self.oid, self.name, self.started, self.port) == (
            other.oid,
            other.name,
            other.started,
            other.port,
        )


_WHO = """SELECT d.oid::bigint, current_database(), pg_postmaster_start_time(), current_setting('port')
          FROM pg_database d WHERE d.datname = current_database()"""
_INSTANCE_TABLES = """SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"""


def identify(conn: psycopg.Connection) -> ServerDatabase:
    """Who `conn` reached; readable by any role (the system identifier only where granted)."""
    oid, name, started, port = conn.execute(_WHO).fetchone()  # type: ignore[misc]
    system_identifier = None
    try:
        with conn.transaction():
            system_identifier = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[
                0
            ]  # type: ignore[index]
    except psycopg.Error:
        pass  # not granted to this role: the other parts still tell servers apart
    return ServerDatabase(int(oid), str(name), started, str(port), system_identifier)


def holds_instance_id(conn: psycopg.Connection, instance_id: str) -> bool:
    """Whether any `opsflow_instance` table this role can read in `conn`'s database holds the id."""
    from flows.records.instance import TABLE

    for (schema,) in conn.execute(_INSTANCE_TABLES, (TABLE,)).fetchall():
        statement = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE id::text = %s)").format(
            ident(schema, TABLE)
        )
        try:
            with conn.transaction():
                if conn.execute(statement, (instance_id,)).fetchone()[0]:  # type: ignore[index]
                    return True
        except psycopg.Error:
            continue  # not readable by this role: the server's own identity still decides
    return False


def records_identity() -> tuple[str, ServerDatabase]:
    """The records database's instance id and who its server says it is."""
    from sqlalchemy.exc import DBAPIError

    from flows.records import db as records

    instance_id = records.instance_id()
    engine = records.get_engine()
    try:
        raw = engine.raw_connection()
    except DBAPIError as exc:
        raise records.records_failure(exc, engine.url) from None
    try:
        return instance_id, identify(raw.driver_connection)
    except psycopg.Error as exc:
        raise records.records_failure(exc, engine.url) from None
    finally:
        raw.close()


def pinned(target: Target, conn: psycopg.Connection) -> Target:
    """`target` reaching exactly the server `conn` reached: its host, address and port."""
    params = {k: v for k, v in target.params if k != "hostaddr"}
    params["host"] = conn.info.host
    params["port"] = str(conn.info.port)
    if conn.info.hostaddr:
        params["hostaddr"] = conn.info.hostaddr
    return Target(tuple(sorted(params.items())))


def verified_target(target: Target, settings: MaintenanceSettings, procedure: str) -> Target:
    """`target` once its server has said it is not the records database, pinned to the address
    that answered; `ValidationError` (exit 3) when it is. A target that cannot be reached raises
    the procedure's own connection error; one whose database does not exist yet (`db init`, a
    restore) is not the records database, which exists."""
    if records_parameters() is None:
        return target
    instance_id, records = records_identity()
    timeout = settings.connect_timeout_seconds
    try:
        with connect(target, autocommit=True, connect_timeout=timeout, settings=settings) as conn:
            try:
                if holds_instance_id(conn, instance_id):
                    raise _refusal(
                        procedure,
                        target,
                        "holds the id of opsflow's own records database (OPSFLOW_DATABASE_URL): "
                        "it is that database or a copy of it",
                    )
                reached = identify(conn)
            except psycopg.Error as exc:
                detail = scrub(
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, target
                )
                raise OpsflowError(
                    f"{procedure}: cannot check that {target} is not opsflow's records database: {detail}"
                ) from None
            if reached.same_as(records):
                raise _refusal(
                    procedure,
                    target,
                    "is opsflow's own records database (OPSFLOW_DATABASE_URL): its server says so",
                )
            return pinned(target, conn)
    except DependencyError as missing:
        # No such database there; pin to the server through its maintenance database if we may.
        try:
            with connect(target.with_database("postgres"), connect_timeout=timeout) as conn:
                return pinned(target, conn)
        except OpsflowError:
            raise missing from None
