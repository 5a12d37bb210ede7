"""Options every command shares, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show debug lines.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Show only warnings, errors and results.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
