"""`db vacuum|analyze|purge|audit|slow-queries`: routine PostgreSQL housekeeping commands."""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer

from flows.cli_options import Json, Quiet, Verbose
from flows.console import Console
from flows.maintenance.ages import parse_age
from flows.maintenance.cli import DatabaseUrl, DryRun, Env, db_app, run, secret

Tables = Annotated[
    list[str] | None,
    typer.Option(
        "--table",
        "-t",
        help="Table to process, name or schema.name; repeatable or comma-separated (default: every user table).",
        show_default=False,
    ),
]
AuditSchema = Annotated[str, typer.Option("--audit-schema", help="Schema of audit_log and audit_trigger().")]


def _render(where: str) -> Any:
    """The render function `module:name`, imported when called: after the flow ran, so Prefect is
    never imported before its API and logging are set up."""

    def render(console: Console, outcome: dict[str, Any]) -> None:
        module, _, name = where.partition(":")
        getattr(importlib.import_module(module), name)(console, outcome)

    return render


def _maintain(
    verb: str,
    tables: list[str] | None,
    database_url: str | None,
    env: str | None,
    dry_run: bool,
    json_output: bool,
    verbose: bool,
    quiet: bool,
) -> int:
    console = Console(f"db-{verb}", verbose=verbose, quiet=quiet)
    return run(
        console,
        f"flows.maintenance.housekeeping:{verb}_tables",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        render=_render("flows.maintenance.housekeeping:render_maintenance"),
        tables=tables or None,
        dry_run=dry_run,
        environment=env,
        database_url=secret(database_url),
    )


@db_app.command("vacuum")
def vacuum(
    table: Tables = None,
    database_url: DatabaseUrl = None,
    env: Env = None,
    dry_run: DryRun = False,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """VACUUM (ANALYZE) each table in turn; report duration, dead tuples before/after and size.

    Unknown table: exit 3. A table we do not own is skipped by PostgreSQL: exit 5."""
    return _maintain("vacuum", table, database_url, env, dry_run, json_output, verbose, quiet)


@db_app.command("analyze")
def analyze(
    table: Tables = None,
    database_url: DatabaseUrl = None,
    env: Env = None,
    dry_run: DryRun = False,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """ANALYZE each table in turn (fresh planner statistics), with the same report as vacuum."""
    return _maintain("analyze", table, database_url, env, dry_run, json_output, verbose, quiet)


@db_app.command("purge")
def purge(
    table: Annotated[
        str, typer.Argument(help="Table with soft-deleted rows: name or schema.name.", show_default=False)
    ],
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            help="Purge rows soft-deleted longer ago than this: 90d, 36h, 2w.",
            show_default=False,
        ),
    ],
    column: Annotated[str, typer.Option("--column", help="The soft-delete timestamp column.")] = "deleted_at",
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", min=1, max=1_000_000, help="Rows per batch (one short transaction each)."
        ),
    ] = 1000,
    audit_schema: AuditSchema = "public",
    database_url: DatabaseUrl = None,
    env: Env = None,
    dry_run: DryRun = False,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Delete rows soft-deleted longer ago than --older-than, in batches, each recorded in audit_log.

    Each batch writes one audit_log entry (operation PURGE) holding its rows as JSON, to restore them.
    A dry run counts only (exit 10); a second run removes nothing."""
    console = Console("db-purge", verbose=verbose, quiet=quiet)
    return run(
        console,
        "flows.maintenance.housekeeping:purge_soft_deleted",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        check=lambda: parse_age(older_than),
        render=_render("flows.maintenance.housekeeping:render_purge"),
        table=table,
        older_than=older_than,
        column=column,
        batch_size=batch_size,
        audit_schema=audit_schema,
        dry_run=dry_run,
        environment=env,
        database_url=secret(database_url),
    )


@db_app.command("slow-queries")
def slow_queries(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="How many statements.")] = 20,
    by: Annotated[
        str, typer.Option("--by", help="Order by total, mean or max time, or calls.", case_sensitive=False)
    ] = "total",
    database_url: DatabaseUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """The slowest statements from pg_stat_statements; exit 2 with how to enable it when it is not."""
    console = Console("db-slow-queries", verbose=verbose, quiet=quiet)
    return run(
        console,
        "flows.maintenance.audit:slow_queries",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        render=_render("flows.maintenance.audit:render_slow_queries"),
        limit=limit,
        by=by.lower(),
        environment=env,
        database_url=secret(database_url),
    )


audit_app = typer.Typer(
    help="Seed 004's audit trail: audit_log and a trigger recording every row change.", no_args_is_help=True
)
db_app.add_typer(audit_app, name="audit")


@audit_app.command("enable")
def audit_enable(
    tables: Annotated[
        list[str], typer.Argument(help="Tables to audit: name or schema.name.", show_default=False)
    ],
    audit_schema: AuditSchema = "public",
    database_url: DatabaseUrl = None,
    env: Env = None,
    dry_run: DryRun = False,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Install the audit trigger on TABLES (with audit_log and audit_trigger()); idempotent.

    Sessions name the acting user with SET app.user_id = '42'; it lands in audit_log.user_id."""
    console = Console("db-audit-enable", verbose=verbose, quiet=quiet)
    return run(
        console,
        "flows.maintenance.audit:enable_audit_trail",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        tables=tables,
        audit_schema=audit_schema,
        dry_run=dry_run,
        environment=env,
        database_url=secret(database_url),
    )


@audit_app.command("status")
def audit_status(
    audit_schema: AuditSchema = "public",
    database_url: DatabaseUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """List the audited tables and whether their trigger is enabled."""
    console = Console("db-audit-status", verbose=verbose, quiet=quiet)
    return run(
        console,
        "flows.maintenance.audit:audit_status",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        render=_render("flows.maintenance.audit:render_audit_status"),
        audit_schema=audit_schema,
        environment=env,
        database_url=secret(database_url),
    )
