"""`opsflow breakers list|reset`: the circuit breakers' shared state in the records database."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli_options import Json, Quiet, Verbose
from flows.console import Console
from flows.errors import EXIT_OK, OpsflowError, ValidationError

breakers_app = typer.Typer(
    help="Circuit breakers shared by workflow runs: list, reset.", no_args_is_help=True
)


@breakers_app.command("list")
def list_command(json_output: Json = False, verbose: Verbose = False, quiet: Quiet = False) -> int:
    """Every breaker a run has used: state, consecutive failures, when it opened, last run."""
    from flows.maintenance.cli import table
    from flows.records.breakers import list_breakers
    from flows.records.db import session

    console = Console(verbose=verbose, quiet=quiet)
    try:
        with session() as db:
            rows = [
                {
                    "name": r.name,
                    "state": r.state,
                    "failures": r.failures,
                    "opened_at": r.opened_at.isoformat(timespec="seconds") if r.opened_at else "-",
                    "updated_at": r.updated_at.isoformat(timespec="seconds"),
                    "last_run": r.last_run or "-",
                }
                for r in list_breakers(db)
            ]
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    if json_output:
        console.json(rows)
    else:
        console.out(table(rows) if rows else "no circuit breaker has been used yet")
    return EXIT_OK


@breakers_app.command("reset")
def reset_command(
    name: Annotated[str, typer.Argument(help="Breaker name (from `breakers list`).", show_default=False)],
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> int:
    """Close a breaker now (forget its failures): the next run tries its steps again."""
    from flows.records.breakers import reset
    from flows.records.db import session

    console = Console(verbose=verbose, quiet=quiet)
    try:
        with session() as db:
            if not reset(db, name):
                raise ValidationError(f"no circuit breaker {name!r} (see `breakers list`)")
    except OpsflowError as err:
        console.error(str(err))
        return err.exit_code
    console.info(f"circuit breaker {name!r} reset: closed, no failures")
    return EXIT_OK
