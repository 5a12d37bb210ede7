"""`db init`: the database, roles and schemas the application needs (seed 003's init_database).

Idempotent: each object is looked up first and created only when missing, so a second run
changes nothing and says so. Roles are created NOLOGIN (group roles: people and services log
in as their own users and are granted membership), so no password is ever involved.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import SecretStr

from flows.errors import EXIT_DRY_RUN
from flows.maintenance.guard import verified_target, writable_target
from flows.maintenance.pg import Target, connect, database_exists, ident
from flows.maintenance.record import Outcome, finish, recorded
from flows.maintenance.retry import transient_retries
from flows.maintenance.settings import MaintenanceSettings, load_settings


def admin_target(target: Target) -> Target:
    """The server's maintenance database, where databases and roles are created."""
    return target.with_database("postgres")


@task(name="ensure-roles", cache_policy=NO_CACHE, persist_result=False, **transient_retries())
def ensure_roles(target: Target, roles: list[str], dry_run: bool) -> list[str]:
    changes = []
    with connect(admin_target(target), autocommit=True) as conn:
        for role in roles:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                continue
            changes.append(f"create role {role}")
            if not dry_run:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident(role)))
    return changes


@task(name="ensure-database", cache_policy=NO_CACHE, persist_result=False, **transient_retries())
def ensure_database(target: Target, owner: str, dry_run: bool) -> list[str]:
    with connect(admin_target(target), autocommit=True) as conn:
        if database_exists(conn, target.dbname):
            return []
        if not dry_run:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident(target.dbname), ident(owner)))
    return [f"create database {target.dbname} owned by {owner}"]


@task(name="ensure-schemas", cache_policy=NO_CACHE, persist_result=False, **transient_retries())
def ensure_schemas(target: Target, schemas: list[str], owner: str, readonly: str, dry_run: bool) -> list[str]:
    changes: list[str] = []
    with connect(target) as conn:
        for schema in schemas:
            exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
            if not exists:
                changes.append(f"create schema {schema} owned by {owner}")
                if not dry_run:
                    conn.execute(
                        sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(ident(schema), ident(owner))
                    )
            can_use = (
                exists
                and conn.execute(
                    "SELECT has_schema_privilege(%s, %s, 'USAGE')", (readonly, schema)
                ).fetchone()[0]
            )
            if not can_use:
                changes.append(f"grant usage on schema {schema} to {readonly}")
                if not dry_run:
                    conn.execute(
                        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ident(schema), ident(readonly))
                    )
            has_default = (
                exists
                and conn.execute(
                    """SELECT 1 FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace
                   WHERE n.nspname = %s AND d.defaclrole = %s::regrole AND d.defaclobjtype = 'r'
                   AND d.defaclacl::text LIKE %s""",
                    (schema, owner, f"%{readonly}=r/%"),
                ).fetchone()
            )
            if not has_default:
                changes.append(f"grant select on future tables in {schema} to {readonly}")
                if not dry_run:
                    conn.execute(
                        sql.SQL(
                            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON TABLES TO {}"
                        ).format(ident(owner), ident(schema), ident(readonly))
                    )
        if dry_run:
            conn.rollback()
    return changes


def plan_parameters(settings: MaintenanceSettings) -> dict[str, Any]:
    return {
        "schemas": settings.schemas,
        "owner_role": settings.owner_role,
        "readonly_role": settings.readonly_role,
    }


@flow(name="db-init", log_prints=True)
def init_database(
    dry_run: bool = False, environment: str | None = None, database_url: SecretStr | None = None
) -> dict[str, Any]:
    """Create the target database, its owner and read-only roles, and its schemas; idempotent."""
    settings = load_settings(environment, database_url=database_url)
    target = writable_target(settings, "db init")
    params = {"dry_run": dry_run, "database": str(target)} | plan_parameters(settings)
    with recorded("db-init", params, settings) as outcome:
        target = verified_target(target, settings, "db init")
        changes = ensure_roles(target, [settings.owner_role, settings.readonly_role], dry_run)
        changes += ensure_database(target, settings.owner_role, dry_run)
        if dry_run and changes and any(c.startswith("create database") for c in changes):
            changes += [
                f"create schema {s} owned by {settings.owner_role} (and grants)" for s in settings.schemas
            ]
        else:
            changes += ensure_schemas(
                target, settings.schemas, settings.owner_role, settings.readonly_role, dry_run
            )
        _report(outcome, target, changes, dry_run)
    return finish(outcome, table=[{"change": c} for c in outcome.details["changes"]] or None)


def _report(outcome: Outcome, target: Target, changes: list[str], dry_run: bool) -> None:
    outcome.rows = 0 if dry_run else len(changes)
    outcome.details = {"database": str(target), "changes": changes, "dry_run": dry_run}
    if dry_run:
        outcome.exit_code = EXIT_DRY_RUN
        outcome.message = (
            f"dry run: {len(changes)} change(s) would be made to {target}"
            if changes
            else f"dry run: {target} is initialised; nothing would change"
        )
    elif changes:
        outcome.message = f"initialised {target}: " + "; ".join(changes)
    else:
        outcome.message = f"{target} is already initialised; nothing changed"
