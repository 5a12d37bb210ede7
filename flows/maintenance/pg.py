"""Reaching the target PostgreSQL: connections, its command-line tools, and what errors mean.

The password stays out of every command line (other users can read those in `ps`): the
tools get a conninfo without it and the password in `PGPASSWORD`. Errors become opsflow's:
a server that cannot be reached or refuses us is `ConnectionFailure` (exit 4), a missing
database is `DependencyError` (exit 2: `db init` has not run), a missing privilege is
`PermissionFailure` (exit 5); every message has the password removed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from flows import children
from flows.errors import ConnectionFailure, DependencyError, OpsflowError, PermissionFailure, ValidationError

# SQLSTATE classes of a server that cannot be reached or refuses us.
_CONNECTION_SQLSTATES = ("08", "28", "57P")


@dataclass(frozen=True)
class Target:
    """One PostgreSQL database, parsed from its URL; `str()` never shows the password."""

    params: tuple[tuple[str, str], ...]

    @classmethod
    def from_url(cls, url: str) -> Target:
        url = url.strip()
        for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
            if url.startswith(prefix):
                url = "postgresql://" + url[len(prefix) :]
        if not url.startswith("postgresql://") and "=" not in url:
            raise ValidationError("the target database URL must look like postgresql://USER@HOST:PORT/DB")
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ValidationError(f"the target database URL is not valid: {_first_line(exc)}") from None
        if not params.get("dbname"):
            raise ValidationError("the target database URL names no database (…/DBNAME)")
        return cls(tuple(sorted((k, str(v)) for k, v in params.items())))

    @property
    def dbname(self) -> str:
        return self.get("dbname")

    @property
    def password(self) -> str | None:
        return dict(self.params).get("password")

    def get(self, key: str, default: str = "") -> str:
        return dict(self.params).get(key, default)

    def with_database(self, dbname: str) -> Target:
        return Target(tuple(sorted({**dict(self.params), "dbname": dbname}.items())))

    def conninfo(self, *, connect_timeout: int | None = None, with_password: bool = True) -> str:
        params = dict(self.params)
        if not with_password:
            params.pop("password", None)
        if connect_timeout is not None and "connect_timeout" not in params:
            params["connect_timeout"] = str(connect_timeout)
        params.setdefault("application_name", "opsflow")
        return make_conninfo(**params)

    def tool_env(self) -> dict[str, str]:
        """Environment for pg_dump/pg_restore/psql: the password, never on their command line."""
        env = dict(os.environ)
        if self.password:
            env["PGPASSWORD"] = self.password
        env.setdefault("PGCONNECT_TIMEOUT", "10")
        return env

    def __str__(self) -> str:
        params = dict(self.params)
        user = params.get("user", "")
        host = params.get("host", "localhost")
        port = params.get("port", "5432")
        return f"postgresql://{user + '@' if user else ''}{host}:{port}/{params.get('dbname', '')}"

    __repr__ = __str__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def scrub(text: str, target: Target) -> str:
    """`text` with the target's password removed."""
    return text.replace(target.password, "***") if target.password else text


def translate(exc: psycopg.Error, target: Target, *, action: str = "") -> OpsflowError | None:
    """The opsflow error `exc` means, or None when it is an ordinary SQL error."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    detail = scrub(_first_line(exc), target)
    doing = f" while {action}" if action else ""
    # At connect time libpq gives no SQLSTATE, only the server's message.
    if sqlstate == "3D000" or (not sqlstate and re.search(r'database ".*" does not exist', detail)):
        return DependencyError(
            f"database {target.dbname!r} does not exist on {str(target).rsplit('/', 1)[0]} — run `db init` first"
        )
    if sqlstate == "42501":
        return PermissionFailure(f"permission denied on {target}{doing}: {detail}")
    if sqlstate.startswith(_CONNECTION_SQLSTATES) or (
        not sqlstate and isinstance(exc, psycopg.OperationalError)
    ):
        return ConnectionFailure(f"cannot reach PostgreSQL at {target}{doing}: {detail}")
    return None


@contextmanager
def connect(
    target: Target, *, autocommit: bool = False, connect_timeout: int = 5, settings: Any = None
) -> Iterator[psycopg.Connection]:
    """A connection to `target`; connection-level errors become opsflow errors."""
    options = {}
    if settings is not None:
        options["options"] = (
            f"-c statement_timeout={int(settings.statement_timeout_seconds * 1000)} "
            f"-c lock_timeout={int(settings.lock_timeout_seconds * 1000)}"
        )
    try:
        conn = psycopg.connect(
            target.conninfo(connect_timeout=connect_timeout), autocommit=autocommit, **options
        )
    except psycopg.Error as exc:
        failure = translate(exc, target, action="connecting")
        if failure is None:
            raise
        raise failure from None
    try:
        with conn:
            yield conn
    except psycopg.OperationalError as exc:
        failure = translate(exc, target)
        if failure is None or conn.closed == 0 and not conn.broken:
            raise
        raise failure from None


def ident(*names: str) -> sql.Composed:
    """A safely quoted (possibly qualified) identifier."""
    return sql.SQL(".").join(sql.Identifier(n) for n in names)


def tool(name: str) -> str:
    """Path of a PostgreSQL client program, or a dependency error saying what to install."""
    path = shutil.which(name)
    if path is None:
        raise DependencyError(f"{name} is not installed — install the PostgreSQL client (postgresql-client)")
    return path


def run_tool(
    target: Target, argv: list[str], *, timeout: float | None = None, stdin: Any = None
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL client program in its own process group; killed with it on timeout,
    and when opsflow dies (even by SIGKILL), so a killed backup or restore never leaves a
    client program running on."""
    with children.watched(
        [tool(argv[0]), *argv[1:]],
        env=target.tool_env(),
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            # Timeout, Ctrl-C, cancellation: the tool must not outlive us.
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, scrub(err, target))


def tool_failure(name: str, done: subprocess.CompletedProcess[str], target: Target) -> OpsflowError:
    """The error a failed client program means (connection problems are exit 4)."""
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    detail = lines[-1] if lines else f"exit code {done.returncode}"
    for line in lines:
        if "error:" in line and ("connection to server" in line or "could not connect" in line):
            return ConnectionFailure(
                f"{name} cannot reach PostgreSQL at {target}: {line.split('error:', 1)[1]}"
            )
        if "does not exist" in line and "database" in line:
            return DependencyError(f"{name}: {line.split(':', 1)[-1].strip()} — run `db init` first")
    return OpsflowError(f"{name} failed on {target}: {detail}")


def server_version(conn: psycopg.Connection) -> int:
    return conn.info.server_version


def database_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def terminate_connections(conn: psycopg.Connection, name: str) -> int:
    """End every other session on database `name`; how many there were."""
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    ).fetchall()
    return len(rows)
