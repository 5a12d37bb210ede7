"""`db extensions`, `db verify` and `db setup`: the end of seed 003's dependency matrix.

    init database -> run migrations -> deploy extensions -> verify (schema consistency)

Each step checks that the one before it holds, and exits 2 naming the missing step when it
does not; `db setup` runs the four in order as subflows and stops at the first that fails.
Schema verification is cached by the head of `migration_history` (and the expected-schema
file): while no migration has run since, the last report is reused for
OPSFLOW_VERIFY_CACHE_SECONDS; `--no-cache` verifies again.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import SecretStr

from flows.errors import EXIT_DRY_RUN, DependencyError
from flows.maintenance.guard import verified_target, writable_target
from flows.maintenance.init import init_database
from flows.maintenance.migrate import history_head, migrate, read_applied
from flows.maintenance.migrations import discover, plan
from flows.maintenance.pg import Target, connect, ident
from flows.maintenance.record import ProcedureFailed, finish, recorded
from flows.maintenance.retry import transient_retries
from flows.maintenance.schema import diff, load_expected
from flows.maintenance.settings import MaintenanceSettings, load_settings

_COLUMNS = """
    SELECT n.nspname || '.' || c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm') AND a.attnum > 0 AND NOT a.attisdropped
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
"""
_INDEXES = "SELECT schemaname || '.' || tablename, indexname FROM pg_indexes"


def require_migrated(conn: psycopg.Connection, settings: MaintenanceSettings) -> None:
    """Migrations must have run, and none may be pending (exit 2 otherwise)."""
    applied = read_applied(conn)
    pending = plan(discover(Path(settings.migrations_dir)), applied).pending
    if not applied or pending:
        raise DependencyError(
            f"{len(pending)} migration(s) pending — run `db migrate` first"
            if applied
            else "no migrations applied — run `db migrate` first"
        )


def installed_extensions(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT extname, extversion FROM pg_extension").fetchall())


@task(name="deploy-extensions", cache_policy=NO_CACHE, persist_result=False, **transient_retries())
def deploy_extensions(target: Target, wanted: list[str], dry_run: bool) -> list[str]:
    with connect(target) as conn:
        available = {r[0] for r in conn.execute("SELECT name FROM pg_available_extensions").fetchall()}
        unknown = [name for name in wanted if name not in available]
        if unknown:
            raise DependencyError(
                f"extension(s) {', '.join(unknown)} are not available on the server — install their packages"
            )
        missing = [name for name in wanted if name not in installed_extensions(conn)]
        if not dry_run:
            for name in missing:
                conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(ident(name)))
    return missing


@flow(name="db-extensions")
def extensions(
    dry_run: bool = False, environment: str | None = None, database_url: SecretStr | None = None
) -> dict[str, Any]:
    """Deploy the required extensions (OPSFLOW_EXTENSIONS); needs migrations applied first."""
    settings = load_settings(environment, database_url=database_url)
    target = writable_target(settings, "db extensions")
    params = {"dry_run": dry_run, "extensions": settings.extensions, "database": str(target)}
    with recorded("db-extensions", params, settings) as outcome:
        target = verified_target(target, settings, "db extensions")
        with connect(target) as conn:
            require_migrated(conn, settings)
        created = deploy_extensions(target, settings.extensions, dry_run)
        outcome.details = {"created": created, "required": settings.extensions}
        if dry_run:
            outcome.exit_code = EXIT_DRY_RUN
            outcome.message = f"dry run: would create {', '.join(created) or 'nothing'}"
        else:
            outcome.rows = len(created)
            outcome.message = (
                f"created extension(s) {', '.join(created)}"
                if created
                else "every required extension is installed"
            )
    return finish(outcome)


def _verify_key(_context: Any, parameters: dict[str, Any]) -> str:
    return "opsflow-schema-verify-" + "-".join(
        str(parameters[k]) for k in ("server", "head_version", "head_checksum", "expected_hash")
    )


@task(name="verify-schema", cache_key_fn=_verify_key, persist_result=True, **transient_retries())
def verify_schema(
    target: Target,
    expected_path: str,
    server: str,
    head_version: int | None,
    head_checksum: str | None,
    expected_hash: str,
) -> dict[str, Any]:
    """Compare the live schema with the expected one (the key arguments only shape the cache)."""
    expected, _ = load_expected(Path(expected_path))
    actual: dict[str, dict[str, Any]] = {}
    with connect(target) as conn:
        for table, column, type_ in conn.execute(_COLUMNS).fetchall():
            actual.setdefault(table, {"columns": {}, "indexes": []})["columns"][column] = type_
        for table, index in conn.execute(_INDEXES).fetchall():
            actual.setdefault(table, {"columns": {}, "indexes": []})["indexes"].append(index)
        installed = installed_extensions(conn)
    report = diff(expected, actual)
    report["problems"] += [f"missing extension {e}" for e in expected.extensions if e not in installed]
    report["head"] = head_version
    return report


@flow(name="db-verify")
def verify(
    no_cache: bool = False, environment: str | None = None, database_url: SecretStr | None = None
) -> dict[str, Any]:
    """Check the schema against the expected tables, columns, indexes and extensions."""
    settings = load_settings(environment, database_url=database_url)
    target = Target.from_url(settings.require_database())
    params = {"no_cache": no_cache, "expected": str(settings.expected_schema), "database": str(target)}
    with recorded("db-verify", params, settings) as outcome:
        _, expected_hash = load_expected(settings.expected_schema)
        with connect(target) as conn:
            require_migrated(conn, settings)
            missing = [e for e in settings.extensions if e not in installed_extensions(conn)]
            if missing:
                raise DependencyError(
                    f"extension(s) {', '.join(missing)} missing — run `db extensions` first"
                )
            version, checksum = history_head(conn)
        task_ = verify_schema.with_options(
            cache_expiration=timedelta(seconds=settings.verify_cache_seconds), refresh_cache=no_cache or None
        )
        state = task_(
            target,
            str(settings.expected_schema),
            str(target),
            version,
            checksum,
            expected_hash,
            return_state=True,
        )
        report = state.result()
        cached = state.name == "Cached"
        outcome.details = report | {"cached": cached}
        for line in report["extra"]:
            outcome.details.setdefault("warnings", []).append(line)
        if report["problems"]:
            outcome.fail(
                f"schema differs from {settings.expected_schema} in {len(report['problems'])} place(s): "
                + "; ".join(report["problems"][:5])
            )
        else:
            outcome.message = f"schema matches {settings.expected_schema} at migration {version}" + (
                " (cached result)" if cached else ""
            )
    return finish(outcome, table=[{"difference": p} for p in report["problems"] + report["extra"]] or None)


@flow(name="db-setup")
def setup(environment: str | None = None, database_url: SecretStr | None = None) -> dict[str, Any]:
    """init → migrate → extensions → verify, in that order; stops at the first that fails."""
    steps = [("init", init_database), ("migrate", migrate), ("extensions", extensions), ("verify", verify)]
    settings = load_settings(environment, database_url=database_url)
    target = writable_target(settings, "db setup")
    with recorded("db-setup", {"database": str(target)}, settings) as outcome:
        verified_target(target, settings, "db setup")  # each step checks its own too
        done = []
        for name, step in steps:
            state = step(environment=environment, database_url=database_url, return_state=True)
            result = state.result(raise_on_failure=False)
            if not state.is_completed():
                error = result
                code = getattr(error, "exit_code", 1)
                outcome.details = {"completed": done, "failed": name}
                outcome.fail(f"{name} failed: {error}", code)
                raise ProcedureFailed(outcome.to_dict())
            done.append({"step": name, "result": result["message"]})
        outcome.details = {"completed": done}
        outcome.message = "; ".join(f"{d['step']}: {d['result']}" for d in done)
    return finish(outcome, table=done)
