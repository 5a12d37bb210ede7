"""Options every command shares, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show debug lines.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Show only warnings, errors and results.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def duration_option(text: str | int | None, option: str) -> float | None:
    """Seconds from an option's duration (30, 30s, 5m, 1h30m, 7d); None when not given.
    A bad value is a ValidationError naming the option (exit 3)."""
    from flows.errors import ValidationError
    from flows.workflow.units import parse_duration

    try:
        return None if text is None else parse_duration(text)
    except ValueError as exc:
        raise ValidationError(f"{option}: {exc}") from None


Params = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        help="One parameter, key=value, the value taken as it is (commas included); repeatable. "
        "Use it for values from outside, which --set would split at `,key=`.",
    ),
]
