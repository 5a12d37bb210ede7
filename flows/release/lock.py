"""One release operation per environment at a time: `release deploy`, `rollback` and `stop`.

Each takes the environment's lock (`release:<environment>` in the records database's
`operation_lock` table, flows/records/locks.py) before it looks at what is live and keeps it
to its end, approval wait included. A second operation is refused (exit 2) with one line
naming the holder: its command, its flow run, host and pid, and while it waits for approval
the `approve` command that decides it. A holder whose process died is taken over: at once on
its own host, after the lease (60 s without a heartbeat) from another one.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flows.errors import DependencyError
from flows.records.locks import (
    LEASE_SECONDS,
    HeldLock,
    LockHeld,
    OperationLock,
    acquire,
    describe,
    live_holder,
)

APPROVE = "python -m flows.batch approve"


def lock_key(environment: str) -> str:
    return f"release:{environment}"


def refusal(environment: str, holder: OperationLock) -> str:
    """The one line a refused operation prints."""
    line = f"{environment}: another release operation is in progress, {describe(holder)}"
    if holder.waiting_for == "approval" and holder.flow_run_id:
        line += (
            f"; it waits for approval: decide with `{APPROVE} {holder.flow_run_id}`"
            " (`--reject --reason ...` to reject)"
        )
    return line + " — try again when it has ended"


def refuse_if_held(environment: str) -> None:
    """`DependencyError` (exit 2) when a live operation holds `environment` now: the command
    line asks before it starts a flow run, whose own `environment_lock` still decides."""
    holder = live_holder(lock_key(environment))
    if holder is not None:
        raise DependencyError(refusal(environment, holder))


def _current_run() -> tuple[str | None, str | None]:
    try:
        from prefect.context import FlowRunContext
    except ImportError:  # pragma: no cover - Prefect is a dependency
        return None, None
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None, None
    return str(context.flow_run.id), context.flow_run.name


@contextmanager
def environment_lock(
    environment: str, operation: str, warn: Callable[[str], None] | None = None
) -> Iterator[HeldLock]:
    """Hold `environment`'s release lock for the block; `DependencyError` (exit 2) when another
    live operation holds it. The current flow run, if any, is named as the holder."""
    warn = warn or logging.getLogger("opsflow.release").warning
    run_id, run_name = _current_run()
    try:
        held = acquire(
            lock_key(environment), operation, flow_run_id=run_id, flow_run_name=run_name, warn=warn
        )
    except LockHeld as exc:
        raise DependencyError(refusal(environment, exc.holder)) from None
    if held.took_over is not None:
        why = (
            "its process is gone"
            if held.took_over.host == socket.gethostname()
            else f"no heartbeat for over {LEASE_SECONDS:g}s"
        )
        warn(f"{environment}: took over the release lock of {describe(held.took_over)}: {why}")
    try:
        yield held
    finally:
        try:
            held.release()
        except Exception as exc:  # the outcome matters more; a dead holder's row is taken over later
            warn(f"{environment}: could not release the release lock: {exc}")
