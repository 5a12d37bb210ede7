"""`python -m flows.batch db ...`: database maintenance procedures from the command line.

Each command runs its Prefect flow in this process (visible in the UI like any run) and exits
with seed 003's codes. Options given here override settings (`OPSFLOW_*`, `.env.<env>`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic import SecretStr

from flows.cli_options import Json, Quiet, Verbose
from flows.console import Console

db_app = typer.Typer(
    help="PostgreSQL upkeep: init, migrate, extensions, verify, backups, vacuum, purge, audit.",
    no_args_is_help=True,
)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Target PostgreSQL URL (default: OPSFLOW_TARGET_DATABASE_URL, else DATABASE_URL; never the records database OPSFLOW_DATABASE_URL).",
        show_default=False,
    ),
]
Env = Annotated[str | None, typer.Option("--env", "-e", help="Environment: reads .env.<env> too.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would change; change nothing; exit 10.")]


def secret(url: str | None) -> SecretStr | None:
    return SecretStr(url) if url else None


def run(
    console: Console,
    flow: str,
    *,
    json_output: bool,
    verbose: bool,
    quiet: bool,
    needs_database: bool = True,
    render: Any = None,
    check: Callable[[], object] | None = None,
    **params: Any,
) -> int:
    """Validate the settings and `check` the options first (exit 3 before any run starts), then
    run the flow (`module:function`, imported only once Prefect's API and logging are set up)."""
    from flows.errors import OpsflowError
    from flows.maintenance.settings import load_settings
    from flows.maintenance.terminal import run_procedure

    try:
        if check is not None:
            check()
        url = params.get("database_url")
        settings = load_settings(params.get("environment"), database_url=url)
        if needs_database:
            from flows.maintenance.guard import WRITING_PROCEDURES
            from flows.maintenance.pg import Target

            if flow in WRITING_PROCEDURES:  # refused here too, before a flow run is started
                refuse_before_running(settings, WRITING_PROCEDURES[flow])
            else:
                Target.from_url(settings.require_database())
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    extra = {"render": render} if render is not None else {}
    return run_procedure(
        console, flow, json_output=json_output, verbose=verbose, quiet=quiet, **extra, **params
    )


def refuse_before_running(settings: Any, procedure: str) -> None:
    """The records-database checks of a writing procedure, so a refusal starts no flow run.
    Other failures of the check (an unreachable target) are left to the flow: it checks again
    before its first change, and records how that ended."""
    import psycopg

    from flows.errors import OpsflowError, ValidationError
    from flows.maintenance.guard import verified_target, writable_target

    target = writable_target(settings, procedure)
    try:
        verified_target(target, settings, procedure)
    except ValidationError:
        raise
    except (OpsflowError, psycopg.Error):
        pass


@db_app.command("init")
def init(
    database_url: DatabaseUrl = None,
    env: Env = None,
    dry_run: DryRun = False,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Create the database, its roles and schemas when missing; a second run changes nothing."""
    console = Console("db-init", verbose=verbose, quiet=quiet)
    return run(
        console,
        "flows.maintenance.init:init_database",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        dry_run=dry_run,
        environment=env,
        database_url=secret(database_url),
    )


backup_app = typer.Typer(
    help="Backups with pg_dump: create, list, verify (by restoring), restore, prune.", no_args_is_help=True
)
db_app.add_typer(backup_app, name="backup")
BackupRef = Annotated[str, typer.Argument(help="Backup id (or prefix), `latest`, or path of its .dump.")]


@backup_app.command("create")
def backup_create(
    label: Annotated[str, typer.Option(help="Why this backup was taken (kept in its manifest).")] = "manual",
    database_url: DatabaseUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """pg_dump (custom format, compressed) of one snapshot, with checksum and row-count manifest."""
    console = Console("db-backup-create", verbose=verbose, quiet=quiet)
    return run(
        console,
        "flows.maintenance.backup:backup_create",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        label=label,
        environment=env,
        database_url=secret(database_url),
    )


@backup_app.command("list")
def backup_list(
    all_databases: Annotated[bool, typer.Option("--all", help="Backups of every database.")] = False,
    database_url: DatabaseUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """The backups on disk, newest first (a backup without a valid manifest is not listed)."""
    from flows.errors import OpsflowError
    from flows.maintenance.backup_files import list_backups, manifest_summary
    from flows.maintenance.pg import Target
    from flows.maintenance.settings import load_settings

    console = Console("db-backup-list", verbose=verbose, quiet=quiet)
    try:
        settings = load_settings(env, database_url=secret(database_url))
        database = None if all_databases else Target.from_url(settings.require_database()).dbname
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    rows = [manifest_summary(m) for m in list_backups(settings.backups(), database)]
    if json_output:
        console.json(rows)
    elif not rows:
        console.out(f"no backups{' of ' + database if database else ''} in {settings.backups()}")
    else:
        console.out(table(rows))
    return 0


@backup_app.command("verify")
def backup_verify(
    backup: Annotated[str, typer.Argument(help="Backup id (or prefix), `latest`, or path.")] = "latest",
    within: Annotated[
        str | None, typer.Option(help="Fail unless the backup is newer than this (24h, 2d).")
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Restore again even if this checksum was proven before.")
    ] = False,
    database_url: DatabaseUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Check a backup's checksum and prove it by restoring into a scratch database."""
    console = Console("db-backup-verify", verbose=verbose, quiet=quiet)
    return run(
        console,
        "flows.maintenance.backup:backup_verify",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        check=lambda: _duration(within, "--within"),
        backup=backup,
        within=within,
        no_cache=no_cache,
        environment=env,
        database_url=secret(database_url),
    )


@backup_app.command("restore")
def backup_restore(
    backup: BackupRef,
    into: Annotated[
        str | None, typer.Option(help="Restore into this new database instead of replacing the target.")
    ] = None,
    drop_replaced: Annotated[
        bool, typer.Option("--drop-replaced", help="Drop the replaced database instead of keeping it aside.")
    ] = False,
    dry_run: DryRun = False,
    database_url: DatabaseUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Restore a backup beside the target and swap it in (the target is untouched if it fails)."""
    console = Console("db-backup-restore", verbose=verbose, quiet=quiet)
    return run(
        console,
        "flows.maintenance.backup:backup_restore",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        backup=backup,
        into=into,
        keep_replaced=not drop_replaced,
        dry_run=dry_run,
        environment=env,
        database_url=secret(database_url),
    )


@backup_app.command("prune")
def backup_prune(
    keep_last: Annotated[int, typer.Option(help="Always keep this many newest backups.", min=1)] = 7,
    older_than: Annotated[str, typer.Option(help="Remove only backups older than this (30d, 12h).")] = "30d",
    dry_run: DryRun = False,
    database_url: DatabaseUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Remove backups beyond the newest --keep-last that are older than --older-than."""
    console = Console("db-backup-prune", verbose=verbose, quiet=quiet)
    return run(
        console,
        "flows.maintenance.backup:backup_prune",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        check=lambda: _duration(older_than, "--older-than"),
        keep_last=keep_last,
        older_than=older_than,
        dry_run=dry_run,
        environment=env,
        database_url=secret(database_url),
    )


def _duration(text: str | None, option: str) -> None:
    from flows.maintenance.backup_files import parse_duration

    if text:
        parse_duration(text, what=option)


def table(rows: list[dict[str, Any]]) -> str:
    """A plain aligned text table of dicts with the same keys."""
    if not rows:
        return ""
    columns = list(rows[0])
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


@db_app.command("migrate")
def migrate(
    dry_run: DryRun = False,
    no_backup: Annotated[
        bool, typer.Option("--no-backup", help="Skip the pg_dump before applying (no restore on failure).")
    ] = False,
    migrations_dir: Annotated[
        str | None, typer.Option("--dir", help="Migration files (default: OPSFLOW_MIGRATIONS_DIR).")
    ] = None,
    database_url: DatabaseUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Apply pending migrations in order, each in its own transaction; backup first, restore on failure."""
    console = Console("db-migrate", verbose=verbose, quiet=quiet)
    return run(
        console,
        "flows.maintenance.migrate:migrate",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        dry_run=dry_run,
        backup=not no_backup,
        migrations_dir=migrations_dir,
        environment=env,
        database_url=secret(database_url),
    )


@db_app.command("status")
def status(
    migrations_dir: Annotated[
        str | None, typer.Option("--dir", help="Migration files (default: OPSFLOW_MIGRATIONS_DIR).")
    ] = None,
    database_url: DatabaseUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Applied and pending migrations (and edited or missing ones); changes nothing."""
    from flows.errors import OpsflowError
    from flows.maintenance.migrate import migration_status
    from flows.maintenance.settings import load_settings

    console = Console("db-status", verbose=verbose, quiet=quiet)
    try:
        settings = load_settings(env, database_url=secret(database_url), migrations_dir=migrations_dir)
        report = migration_status(settings)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    if json_output:
        console.json(report)
        return 0
    console.out(table(report["migrations"]) or "no migrations")
    console.out(
        f"{report['database']}: version {report['head']}, {report['pending']} pending"
        + (f", CHANGED after applying: {report['changed']}" if report["changed"] else "")
        + (f", applied but missing files: {report['missing']}" if report["missing"] else "")
    )
    for failure in report["recent_failures"][:1]:
        console.warning(
            f"last failure: {failure['version']} {failure['name']} at {failure['at']}: {failure['error']}"
        )
    return 0


@db_app.command("extensions")
def extensions(
    dry_run: DryRun = False,
    database_url: DatabaseUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Deploy the required extensions (OPSFLOW_EXTENSIONS); needs `db migrate` first (else exit 2)."""
    console = Console("db-extensions", verbose=verbose, quiet=quiet)
    return run(
        console,
        "flows.maintenance.verify:extensions",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        dry_run=dry_run,
        environment=env,
        database_url=secret(database_url),
    )


@db_app.command("verify")
def verify(
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Verify again even if no migration ran since the last check.")
    ] = False,
    database_url: DatabaseUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Compare the schema with OPSFLOW_EXPECTED_SCHEMA; needs `db extensions` first (else exit 2)."""
    console = Console("db-verify", verbose=verbose, quiet=quiet)
    return run(
        console,
        "flows.maintenance.verify:verify",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        no_cache=no_cache,
        environment=env,
        database_url=secret(database_url),
    )


@db_app.command("setup")
def setup(
    database_url: DatabaseUrl = None,
    env: Env = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """init → migrate → extensions → verify in order (seed 003's matrix); stops at the first failure."""
    console = Console("db-setup", verbose=verbose, quiet=quiet)
    return run(
        console,
        "flows.maintenance.verify:setup",
        json_output=json_output,
        verbose=verbose,
        quiet=quiet,
        environment=env,
        database_url=secret(database_url),
    )


@db_app.command("history")
def history(
    procedure: Annotated[
        str | None, typer.Option("--procedure", "-p", help="Only this procedure (e.g. db-migrate).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Most rows shown.", min=1)] = 20,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Recent procedure runs from script_execution_log (db, cache and health procedures)."""
    from flows.errors import OpsflowError
    from flows.records.db import session
    from flows.records.procedures import list_executions

    console = Console("db-history", verbose=verbose, quiet=quiet)
    try:
        with session() as db:
            rows = list_executions(db, procedure, limit)
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    records = [
        {
            "id": r.id,
            "procedure": r.script_name,
            "env": r.environment,
            "started_at": r.started_at.isoformat(timespec="seconds"),
            "seconds": f"{r.duration:.1f}" if r.duration is not None else "",
            "status": r.status,
            "exit": "" if r.exit_code is None else r.exit_code,
            "rows": "" if r.rows_affected is None else r.rows_affected,
            "message": (r.message or "")[:70],
        }
        for r in rows
    ]
    if json_output:
        console.json([r.model_dump(mode="json") for r in rows])
    else:
        console.out(table(records) or "no procedure runs recorded yet")
    return 0


# Commands defined in their own modules register themselves on db_app.
from flows.maintenance import cli_housekeeping as _housekeeping  # noqa: E402, F401
