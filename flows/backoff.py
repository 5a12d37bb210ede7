"""Retry delays: backoff, a cap, then jitter. Pure, and cheap to import.

Prefect ignores `retry_jitter_factor` for tasks, so opsflow computes the jittered list itself
and hands it to `retry_delay_seconds`.
"""

from __future__ import annotations

import random


def backoff_delays(
    attempts: int,
    delay: float,
    backoff: str = "exponential",
    jitter: float = 0.0,
    max_delay: float = 600.0,
    rng: random.Random | None = None,
) -> list[float]:
    """The wait before each retry (attempts - 1 of them): fixed, linear or exponential."""
    rng = rng or random.Random()
    delays = []
    for n in range(1, attempts):
        base = {"fixed": delay, "linear": delay * n, "exponential": delay * 2 ** (n - 1)}[backoff]
        base = min(base, max_delay)
        spread = base * jitter
        delays.append(round(max(0.0, base + rng.uniform(-spread, spread)), 3))
    return delays
