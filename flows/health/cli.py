"""`python -m flows.batch health ...`: health checks, their history, and the HTTP endpoint."""

from __future__ import annotations

import typer

health_app = typer.Typer(
    help="Health of PostgreSQL, Redis, disks, the Prefect API and HTTP endpoints.", no_args_is_help=True
)
