"""`--older-than` of `db purge`: an age in days, hours or weeks. Pure, so the command line
refuses a bad one before a flow run starts (and before Prefect is imported)."""

from __future__ import annotations

import re
from datetime import timedelta

from flows.durations import MAX_DURATION_TEXT, check_duration, shown
from flows.errors import ValidationError

_AGE = re.compile(r"^\s*(\d+)\s*(d|days?|h|hours?|w|weeks?)?\s*$", re.IGNORECASE)


def parse_age(text: str) -> timedelta:
    """`90d` (the default unit is days), `36h`, `2w` → a timedelta."""
    match = _AGE.match(str(text))
    if not match:
        raise ValidationError(f"--older-than {shown(text)}: give an age like 90d, 36h or 2w")
    unit = (match[2] or "d")[0].lower()
    try:
        # float: an int of thousands of digits is itself a ValueError, and this one is refused.
        seconds = check_duration(float(match[1]) * {"d": 86400, "h": 3600, "w": 604800}[unit], text)
    except ValueError:
        raise ValidationError(f"--older-than {shown(text)}: give at most {MAX_DURATION_TEXT}") from None
    return timedelta(seconds=seconds)
