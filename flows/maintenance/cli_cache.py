"""`python -m flows.batch cache ...`: Redis upkeep from the command line."""

from __future__ import annotations

import typer

cache_app = typer.Typer(
    help="Redis upkeep: memory and keys by prefix, delete by pattern (SCAN), fix keys without TTL.",
    no_args_is_help=True,
)
