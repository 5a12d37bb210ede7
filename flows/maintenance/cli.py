"""`python -m flows.batch db ...`: database maintenance procedures from the command line.

Each command runs its Prefect flow in this process (visible in the UI like any run) and exits
with seed 003's codes. Options given here override settings (`OPSFLOW_*`, `.env.<env>`).
"""

from __future__ import annotations

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
        help="Target PostgreSQL URL (default: OPSFLOW_TARGET_DATABASE_URL or DATABASE_URL).",
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
    **params: Any,
) -> int:
    """Validate the settings first (exit 3 before any run starts), then run the flow
    (`module:function`, imported only once Prefect's API and logging are set up)."""
    from flows.errors import OpsflowError
    from flows.maintenance.settings import load_settings
    from flows.maintenance.terminal import run_procedure

    try:
        url = params.get("database_url")
        settings = load_settings(params.get("environment"), database_url=url)
        if needs_database:
            from flows.maintenance.pg import Target

            Target.from_url(settings.require_database())
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    return run_procedure(console, flow, json_output=json_output, verbose=verbose, quiet=quiet, **params)


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


# Commands defined in their own modules register themselves on db_app.
from flows.maintenance import cli_housekeeping as _housekeeping  # noqa: E402, F401
