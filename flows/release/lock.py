"""One release operation per target at a time: `release deploy`, `rollback` and `stop`.

Each takes its target directory's lock (`release:<resolved directory>` in the records
database's `operation_lock` table, flows/records/locks.py: keyed by the directory, so every
spelling of it shares one lock) before it looks at what is live and keeps it to its end,
approval wait included. A second operation is refused (exit 2) with one line naming the
holder: its command, its flow run, host and pid, and while it waits for approval the `approve`
command that decides it. A holder whose process died is taken over: at once on its own host,
after the lease (60 s without a heartbeat) from another one. Every step that changes traffic
or the colors runs in `held.step()`: a holder that was taken over meanwhile gets `LockLost`
there and changes nothing more.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.errors import DependencyError
from flows.records.locks import (
    LEASE_SECONDS,
    HeldLock,
    LockHeld,
    LockLost,
    OperationLock,
    StepInProgress,
    acquire,
    describe,
    live_holder,
)
from flows.release.target import Target

APPROVE = "python -m flows.batch approve"


def lock_key(root: Path) -> str:
    """The lock of a target directory: its resolved path, whatever name or link led to it."""
    return f"release:{root.resolve()}"


def refusal(environment: str, holder: OperationLock) -> str:
    """The one line a refused operation prints."""
    line = f"{environment}: another release operation is in progress, {describe(holder)}"
    if holder.waiting_for == "approval" and holder.flow_run_id:
        line += (
            f"; it waits for approval: decide with `{APPROVE} {holder.flow_run_id}`"
            " (`--reject --reason ...` to reject)"
        )
    return line + " — try again when it has ended"


def lost(environment: str, exc: LockLost) -> str:
    """The line of an operation whose lock was taken over: it stopped before changing anything more."""
    now = f"{describe(exc.holder)} holds it now" if exc.holder is not None else "it is free now"
    return (
        f"{environment}: lost the release lock (taken over as dead after its lease), so nothing more "
        f"was changed: {now}"
    )


def refuse_if_held(environment: str, root: Path) -> None:
    """`DependencyError` (exit 2) when a live operation holds the target `root` now: the
    command line asks before it starts a flow run, whose own `environment_lock` still decides."""
    holder = live_holder(lock_key(root))
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
    environment: str, root: Path, operation: str, warn: Callable[[str], None] | None = None
) -> Iterator[HeldLock]:
    """Hold the release lock of `environment`'s target `root` for the block; `DependencyError`
    (exit 2) when another live operation holds it. The current flow run, if any, is named as
    the holder. Inside the lock, `root` must be `environment`'s target (else exit 3)."""
    warn = warn or logging.getLogger("opsflow.release").warning
    run_id, run_name = _current_run()
    try:
        held = acquire(lock_key(root), operation, flow_run_id=run_id, flow_run_name=run_name, warn=warn)
    except LockHeld as exc:
        raise DependencyError(refusal(environment, exc.holder)) from None
    except StepInProgress as exc:
        raise DependencyError(f"{environment}: {exc} — try again when it has ended") from None
    if held.took_over is not None:
        why = (
            "its process is gone"
            if held.took_over.host == socket.gethostname()
            else f"no heartbeat for over {LEASE_SECONDS:g}s"
        )
        warn(f"{environment}: took over the release lock of {describe(held.took_over)}: {why}")
    try:
        # Checked under the lock: two first operations naming different environments queue up.
        Target(root).check_owner(environment)
        yield held
    finally:
        try:
            held.release()
        except Exception as exc:  # the outcome matters more; a dead holder's row is taken over later
            warn(f"{environment}: could not release the release lock: {exc}")
