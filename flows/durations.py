"""The longest duration any option, setting or workflow field accepts: 36500 days (100 years).

Ages are subtracted from now and timeouts added to it, in Python datetimes (years 1 to 9999),
PostgreSQL timestamps and the C timeouts of waits and sockets (about 292 years): past a bound
like this one they overflow deep inside a procedure instead of being refused where they are
given. No retention, schedule or timeout needs more.
"""

from __future__ import annotations

MAX_DURATION_SECONDS = 36500 * 86400
MAX_DURATION_TEXT = "36500d (100 years)"


def shown(given: object) -> str:
    """`given` as an error message quotes it: repr, cut to 40 characters."""
    text = repr(given)
    return text if len(text) <= 40 else text[:36] + "...'"


def check_duration(seconds: float, given: object) -> float:
    """`seconds`, or ValueError when it is longer than the longest duration accepted."""
    if not seconds <= MAX_DURATION_SECONDS:  # also infinity and NaN
        raise ValueError(f"{shown(given)} is longer than the longest duration accepted, {MAX_DURATION_TEXT}")
    return seconds
