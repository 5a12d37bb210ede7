"""Circuit breakers (seed 001): a step that keeps failing is not run again for a while.

The state of each named breaker is shared by every run and process through the records
database (flows/records/breakers.py); this module is the pure part: what a breaker in a given
state lets through now, and what an outcome does to it.

    closed     steps run; `failure_threshold` consecutive failures open it
    open       steps do not run (their `fallback_steps` do) until `recovery_timeout` has passed
    half_open  one trial run is let through; its success closes the breaker, its failure opens
               it again. A trial that never reported back (its run was killed) is given up
               after `recovery_timeout`, and another trial is let through.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class BreakerState:
    name: str
    state: str = CLOSED
    failures: int = 0
    opened_at: datetime | None = None
    trial_since: datetime | None = None  # half_open: when the trial run was let through

    def describe(self, recovery: timedelta | None = None, now: datetime | None = None) -> str:
        if self.state == CLOSED:
            return f"closed ({self.failures} consecutive failure{'s' if self.failures != 1 else ''})"
        text = f"{self.state.replace('_', '-')} since {self.opened_at:%Y-%m-%d %H:%M:%S}Z after {self.failures} failures"
        if self.state == OPEN and recovery is not None and now is not None and self.opened_at is not None:
            left = max(0.0, (self.opened_at + recovery - now).total_seconds())
            text += f"; a trial run in {left:.0f}s"
        return text


def admit(state: BreakerState, now: datetime, recovery: timedelta) -> tuple[bool, BreakerState]:
    """(may the step run now, the breaker's new state)."""
    if state.state == CLOSED:
        return True, state
    if state.state == OPEN:
        if state.opened_at is not None and now - state.opened_at < recovery:
            return False, state
        return True, replace(state, state=HALF_OPEN, trial_since=now)
    # half open: one trial at a time, unless the last one has gone silent
    if state.trial_since is not None and now - state.trial_since < recovery:
        return False, state
    return True, replace(state, trial_since=now)


def record(state: BreakerState, succeeded: bool, now: datetime, threshold: int) -> BreakerState:
    """The breaker after a step that it let through succeeded or failed."""
    if succeeded:
        return BreakerState(state.name)
    failures = state.failures + 1
    if state.state == HALF_OPEN or failures >= threshold:
        return BreakerState(state.name, OPEN, failures, opened_at=now)
    return replace(state, failures=failures)
