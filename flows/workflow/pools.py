"""Resource pools shared across runs: `resource_limits.shared` as Prefect global concurrency limits.

The dispatcher (pure, dispatch.py) keeps one run's steps within its limits. Runs that name
the same pool also hold each step's reservation from two Prefect global concurrency limits,
`opsflow-memory-NAME` (one slot per MiB) and `opsflow-cpu-NAME` (one slot per millicore),
for as long as the step's command runs. The slots are Prefect's leases: the `concurrency`
context manager renews them from a thread while the step runs and releases them when it
ends, however it ends; a run killed outright stops renewing and the server's repossessor frees
its slots once the lease (`LEASE_SECONDS`) lapses, about 75 s later (measured against
`prefect server start`; a temporary server has no repossessor, hence the warning in `declare`).
Nothing here keeps its own bookkeeping.

`SharedPool` and the descriptions are pure (`plan` uses them); `declare` and `hold` talk to
the server and import Prefect when called.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flows.errors import ConnectionFailure
from flows.workflow.dispatch import Reservation
from flows.workflow.spec import ResourceLimits
from flows.workflow.units import format_cpu, format_duration, format_memory

MIB = 2**20
# Prefect's shortest lease: a killed run's slots come back soonest.
LEASE_SECONDS = 60.0
# How often a waiting step asks again. Prefect's own wait (its 423 Retry-After) grows with
# the slots denied, and a reservation is hundreds of slots, so it soon reaches its 30 s cap:
# the step would sit idle long after the pool had room. One request per waiting step at this
# pace is cheap.
POLL_SECONDS = 0.5
# Refusals although the pool seemed to have room (races with other runs) before a step says so.
REFUSALS_TO_REPORT = 10

# Set when the run is interrupted (tasks.stop_commands_on_signals): a step still waiting
# for room gives up instead of keeping the process alive.
stopping = threading.Event()


class PoolWaitEnded(Exception):
    """A step stopped waiting for room: the run's deadline ran out, or the run was interrupted."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def limit_name(kind: str, pool: str) -> str:
    return f"opsflow-{kind}-{pool}"


def show_slots(kind: str, slots: int) -> str:
    return format_memory(slots * MIB) if kind == "memory" else format_cpu(slots / 1000)


@dataclass(frozen=True)
class SharedPool:
    """A pool's name and the size this workflow declares for it, in slots (MiB, millicores)."""

    name: str
    sizes: dict[str, int]

    @classmethod
    def of(cls, limits: ResourceLimits | None) -> SharedPool | None:
        if limits is None or limits.shared is None:
            return None
        sizes = {}
        if limits.memory_limit is not None:
            sizes["memory"] = limits.memory_limit // MIB
        if limits.cpu_limit is not None:
            sizes["cpu"] = math.floor(limits.cpu_limit * 1000 + 1e-6)
        return cls(limits.shared, sizes)

    def slots(self, reservation: Reservation) -> dict[str, int]:
        """What a step holds from the pool: its reservation, rounded up, for the kinds the pool has."""
        wanted = {"memory": reservation.memory, "cpu": reservation.cpu}
        slots = {}
        for kind in self.sizes:
            amount = wanted[kind]
            if amount is None:
                continue
            slots[kind] = max(1, math.ceil(amount / MIB if kind == "memory" else amount * 1000 - 1e-6))
        return slots


@dataclass(frozen=True)
class Claim:
    """A step's share of a pool: the run passes it to the step's task."""

    pool: SharedPool
    slots: dict[str, int]


def describe_limits(limits: ResourceLimits | None) -> str:
    """What the run's memory / cpu limits bound: this run, or every run sharing a pool; "" if none."""
    if limits is None:
        return ""
    parts = [f"memory {format_memory(limits.memory_limit)}"] if limits.memory_limit is not None else []
    parts += [f"cpu {format_cpu(limits.cpu_limit)}"] if limits.cpu_limit is not None else []
    if not parts:
        return ""
    if limits.shared is None:
        return ", ".join(parts) + " reserved at once by this run's steps (not shared with other runs)"
    names = ", ".join(
        limit_name(kind, limits.shared)
        for kind, value in (("memory", limits.memory_limit), ("cpu", limits.cpu_limit))
        if value is not None
    )
    return (
        ", ".join(parts) + f" reserved at once, shared with every run naming pool `{limits.shared}` "
        f"(Prefect global concurrency limits {names})"
    )


# -- on the server ---------------------------------------------------------------------------


def declare(pool: SharedPool, logger: Any) -> None:
    """Create the pool's limits, or set them to this workflow's sizes (a change is a warning)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        # A temporary server keeps the leases in its memory and runs no repossessor, while the
        # slots are counted in Prefect's database, which outlives it.
        logger.warning(
            f"shared pool `{pool.name}` on Prefect's temporary server: a run killed outright keeps "
            "its slots until they are reset (`prefect gcl update NAME --active-slots 0`); use a "
            "running server (OPSFLOW_SERVER=auto, or PREFECT_API_URL)"
        )
    try:
        with get_client(sync_client=True) as client:
            changes = [
                (kind, size, _ensure(client, limit_name(kind, pool.name), size))
                for kind, size in pool.sizes.items()
            ]
    except Exception as exc:  # the server refused or is unreachable: the run fails as exit 4, not a traceback
        raise ConnectionFailure(
            f"shared pool `{pool.name}`: cannot set its limits on the Prefect server: {type(exc).__name__}: {exc}"
        ) from exc
    for kind, size, before in changes:
        if before is None:
            logger.info(f"shared pool `{pool.name}`: {kind} {show_slots(kind, size)} (created)")
        elif before != size:
            logger.warning(
                f"shared pool `{pool.name}`: {kind} was {show_slots(kind, before)}, now "
                f"{show_slots(kind, size)} as this workflow declares; every run sharing the pool "
                "now waits for that size — workflows sharing a pool should declare the same limits"
            )


def _ensure(client: Any, name: str, size: int) -> int | None:
    """Set the limit `name` to `size`; its size before, or None when it did not exist."""
    import httpx
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    refused: Exception | None = None
    for _ in range(3):  # another run may create or delete it between our calls
        try:
            before = client.read_global_concurrency_limit_by_name(name).limit
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=size))
            except (ObjectAlreadyExists, httpx.HTTPStatusError) as exc:
                # Another run created it first. The server answers that with 409, or, when
                # its database noticed the duplicate name only at commit, with another error:
                # whatever the status, read it again; only a limit still missing is a failure.
                refused = exc
                continue
            return None
        if before != size:
            try:
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=size))
            except ObjectNotFound:
                continue
        return before
    if refused is not None and not isinstance(refused, ObjectAlreadyExists):
        raise ConnectionFailure(
            f"cannot create the Prefect global concurrency limit `{name}`: {refused}"
        ) from refused
    raise ConnectionFailure(f"the Prefect global concurrency limit `{name}` keeps changing; try again")


@contextlib.contextmanager
def hold(claim: Claim, step: str, logger: Any, deadline: float | None = None) -> Iterator[None]:
    """Hold the step's slots while the body runs; wait (logging once why) until they fit.

    All of a step's kinds are taken together or not at all, so a step never sits on memory
    while it waits for CPU that another run's step, holding the rest of the memory, has.
    """
    from prefect.client.orchestration import get_client

    pool = claim.pool
    waited_since: float | None = None
    refused = 0
    with get_client(sync_client=True) as client:
        while True:
            with _trying:  # this process's steps try one at a time: no races among them
                sizes, used = _read(client, pool)
                taken = _try(claim, sizes, used)
                if taken is None and _fits(claim, sizes, used):
                    sizes, used = _read(client, pool)  # refused: another run was faster; see its slots
            if taken is not None:
                stack = taken
                break
            if waited_since is None:  # refused, or no room: say so once, with what holds the pool
                waited_since = time.time()
                logger.info(_waiting_line(step, claim, sizes, used))
            if _fits(claim, sizes, used):  # refused all the same: another run was faster, or the server
                refused += 1
                if refused == REFUSALS_TO_REPORT:
                    logger.warning(
                        f"`{step}`: shared pool `{pool.name}` seems to have room but refused its slots "
                        f"{refused} times in a row; still trying"
                    )
            if deadline is not None and time.time() >= deadline:
                raise PoolWaitEnded(
                    f"the workflow's --timeout ran out while it waited for shared pool `{pool.name}`",
                    timed_out=True,
                )
            wait = POLL_SECONDS if deadline is None else min(POLL_SECONDS, max(0.0, deadline - time.time()))
            if stopping.wait(wait):
                raise PoolWaitEnded(f"the run was interrupted while it waited for shared pool `{pool.name}`")
    try:
        if waited_since is not None:
            logger.info(
                f"`{step}` has room in shared pool `{pool.name}` after "
                f"{format_duration(time.time() - waited_since)}"
            )
        yield
    finally:
        _release(stack, pool, logger)


def _release(stack: contextlib.ExitStack, pool: SharedPool, logger: Any) -> None:
    """Give the slots back. A failure here must not turn the step's result into an error (a
    step that succeeded would be retried): the lease lapses and the server frees them."""
    try:
        stack.close()
    except Exception as exc:
        logger.warning(
            f"slots of shared pool `{pool.name}` not released ({type(exc).__name__}: {exc}); "
            f"their lease frees them within {LEASE_SECONDS:.0f} s"
        )


_trying = threading.Lock()


def _wanted(claim: Claim, sizes: dict[str, int]) -> dict[str, int]:
    """The slots to take: a reservation larger than the pool takes all of it."""
    return {kind: min(slots, sizes[kind]) for kind, slots in claim.slots.items() if sizes.get(kind)}


def _fits(claim: Claim, sizes: dict[str, int], used: dict[str, int]) -> bool:
    return all(used[kind] + n <= sizes[kind] for kind, n in _wanted(claim, sizes).items())


def _try(claim: Claim, sizes: dict[str, int], used: dict[str, int]) -> contextlib.ExitStack | None:
    """The claim's slots, all held by the returned stack, or None when the pool has no room."""
    # Try only when the pool seems to have room: a refused try costs requests and Prefect
    # counts it as denied slots. Another run may still take the room first.
    wanted = _wanted(claim, sizes)
    if not _fits(claim, sizes, used):
        return None
    stack = contextlib.ExitStack()
    try:
        if all(_took(stack, limit_name(kind, claim.pool.name), n) for kind, n in wanted.items()):
            return stack
    except BaseException:
        stack.close()
        raise
    stack.close()
    return None


def _took(stack: contextlib.ExitStack, name: str, slots: int) -> bool:
    """One try with Prefect's `concurrency`: False when there is no room (423) or the limit
    shrank below `slots` since it was read (422: read again next time)."""
    import httpx
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency
    from prefect.runtime import task_run

    holder = None
    if task_run.id:
        from prefect.client.schemas.objects import ConcurrencyLeaseHolder

        holder = ConcurrencyLeaseHolder(type="task_run", id=task_run.id)
    try:
        stack.enter_context(
            concurrency(
                name,
                occupy=slots,
                max_retries=0,
                lease_duration=LEASE_SECONDS,
                strict=True,
                holder=holder,
                # a lost renewal must not kill a half-done operation; Prefect logs a warning
                raise_on_lease_renewal_failure=False,
            )
        )
    except ConcurrencySlotAcquisitionError as exc:
        cause = exc.__cause__
        if isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code in (422, 423):
            return False
        # the server failed, not the wait: a plain failure, so the step's `retry` applies
        raise ConnectionFailure(f"cannot take slots of `{name}`: {exc}") from exc
    return True


class _QuietRefusedTries(logging.Filter):
    """Prefect's acquisition service logs every refused try as an error; a refused one-shot try
    (`max_retries=0`, only `_took` makes them) is expected here: the step waits, then reads again."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        refused_try = (
            str(record.msg).startswith("Service %r failed to process item")
            and len(args) == 2
            and args[0] == "ConcurrencySlotAcquisitionWithLeaseService"
            and isinstance(args[1], tuple)
            and len(args[1]) > 3
            and args[1][3] == 0
        )
        return not refused_try


logging.getLogger("prefect._internal.concurrency").addFilter(_QuietRefusedTries())


def _read(client: Any, pool: SharedPool) -> tuple[dict[str, int], dict[str, int]]:
    """Each kind's current size and slots in use (recreated at our size if someone deleted it).

    A limit switched off (`active: false`, in the UI or `prefect gcl disable`) is left out: as
    for Prefect, it bounds nothing."""
    from prefect.exceptions import ObjectNotFound

    sizes, used = {}, {}
    for kind, size in pool.sizes.items():
        name = limit_name(kind, pool.name)
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            _ensure(client, name, size)
            limit = client.read_global_concurrency_limit_by_name(name)
        if limit.active:
            sizes[kind], used[kind] = limit.limit, limit.active_slots
    return sizes, used


def _waiting_line(step: str, claim: Claim, sizes: dict[str, int], used: dict[str, int]) -> str:
    asked = {kind: slots for kind, slots in claim.slots.items() if sizes.get(kind)}
    short = [k for k, slots in _wanted(claim, sizes).items() if used[k] + slots > sizes[k]]
    if not short:  # the pool had room when read, but another run's step took it first
        asked_text = ", ".join(f"{show_slots(k, n)} {k}" for k, n in asked.items())
        return f"`{step}` waits for shared pool `{claim.pool.name}`: needs {asked_text}; another run took the room first"
    parts = []
    for kind in short:
        need = f"{show_slots(kind, asked[kind])} {kind}"
        if asked[kind] > sizes[kind]:
            need += " (more than the pool: it waits for all of it)"
        parts.append(
            f"needs {need}; {show_slots(kind, used[kind])} of {show_slots(kind, sizes[kind])} held across runs"
        )
    return f"`{step}` waits for shared pool `{claim.pool.name}`: " + "; ".join(parts)
