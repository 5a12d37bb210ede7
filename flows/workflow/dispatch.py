"""Which steps may start now: dependencies, group and global limits, resources, priority. Pure.

Prefect runs each step as a task; this decides the order. Prefect's `wait_for` alone
cannot express "at most N of this group at once" or "lower priority first", so the flow
asks a `Dispatcher` after every completion.

Resources (`resource_limits.memory_limit` / `cpu_limit`) are reservations counted here too:
within one run the dispatcher never starts a step that does not fit, so no task sits in a
worker thread waiting for room the run itself holds. Counting in the dispatcher keeps the decision in one pure, unit-tested place. Runs that
share the limits (`resource_limits.shared`) also hold the same reservations from Prefect
global concurrency limits, each step while its command runs (pools.py): this count keeps
one run's steps within the limits, those keep all the sharing runs together.

A leaf reserves its own `resources`, each of `memory` and `cpu` falling back to the nearest
enclosing group's `resource_requirements` (a default for *each* child, not a budget shared
by the group). A leaf starts only when its reservation fits beside those of the running
leaves; a leaf that does not fit may be passed by a smaller one further down the queue (the
workflow is finite, so it waits, never starves); and a leaf always starts when nothing is
running, so a reservation larger than the limit (refused by `validate`, but possible
without it) cannot deadlock the run. A leaf held back for room is reported once
(`take_waits`), saying what it needs and who holds the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from flows.workflow.graph import Graph
from flows.workflow.spec import Resources
from flows.workflow.units import format_cpu, format_memory


class Outcome(StrEnum):
    COMPLETED = "Completed"
    SKIPPED = "Skipped"
    FAILED = "Failed"
    NOT_RUN = "NotRun"

    @property
    def satisfies(self) -> bool:
        """Whether a dependent step may run after this outcome."""
        return self in (Outcome.COMPLETED, Outcome.SKIPPED)


@dataclass(frozen=True)
class Reservation:
    """What a running leaf holds: bytes of memory and CPU cores (None: reserves none)."""

    memory: int | None = None
    cpu: float | None = None

    def __bool__(self) -> bool:
        return self.memory is not None or self.cpu is not None


def reservation_of(graph: Graph, leaf: str) -> Reservation:
    """The leaf's own `resources`, each field else the nearest group's `resource_requirements`."""
    found: dict[str, int | float] = {}
    for node_id in (leaf, *graph.ancestors(leaf)):
        step = graph.nodes[node_id].step
        wanted: Resources | None = step.resources if node_id == leaf else step.resource_requirements
        for kind in ("memory", "cpu"):
            value = getattr(wanted, kind, None) if wanted is not None else None
            if value is not None and kind not in found:
                found[kind] = value
    return Reservation(memory=found.get("memory"), cpu=found.get("cpu"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Settled:
    outcome: Outcome
    reason: str = ""


class Dispatcher:
    """Tracks every leaf step from pending to settled and hands out the next ones to start."""

    def __init__(
        self,
        graph: Graph,
        *,
        limit: int | None = None,
        fail_fast: bool = True,
        memory_limit: int | None = None,
        cpu_limit: float | None = None,
    ) -> None:
        self.graph = graph
        self.limit = limit
        self.memory_limit, self.cpu_limit = memory_limit, cpu_limit
        self.reservations = {leaf: reservation_of(graph, leaf) for leaf in graph.leaves}
        self.fail_fast = fail_fast
        self.pending: list[str] = list(graph.leaves)
        self.running: set[str] = set()
        self.settled: dict[str, Settled] = {}
        self.stopped: str | None = None
        self._waits = {leaf: graph.waits_for(leaf) for leaf in graph.leaves}
        self._groups = {leaf: graph.ancestors(leaf) for leaf in graph.leaves}
        self._rank = {
            leaf: (_priority(graph.inherited(leaf, "priority")), graph.nodes[leaf].order)
            for leaf in graph.leaves
        }
        self._leaves_under = {n: graph.leaves_under(n) for n in graph.nodes}
        self._waits_told: set[str] = set()
        self._new_waits: list[str] = []

    @property
    def done(self) -> bool:
        return not self.pending and not self.running

    @property
    def failed(self) -> list[str]:
        return [leaf for leaf, s in self.settled.items() if s.outcome is Outcome.FAILED]

    def ready(self) -> list[str]:
        """Leaves that may start now, best first; they are marked running."""
        if self.stopped:
            self._settle_pending(Outcome.NOT_RUN, self.stopped)
            return []
        self._block_unreachable()
        candidates = sorted(
            (leaf for leaf in self.pending if self._deps_met(leaf)), key=self._rank.__getitem__
        )
        started: list[str] = []
        for leaf in candidates:
            if self.limit is not None and len(self.running) >= self.limit:
                break
            if not self._group_room(leaf):
                continue
            if not self._fits(leaf):
                if leaf not in self._waits_told:
                    self._waits_told.add(leaf)
                    self._new_waits.append(self._waiting_line(leaf))
                continue
            self.pending.remove(leaf)
            self.running.add(leaf)
            started.append(leaf)
        return started

    def finish(self, leaf: str, outcome: Outcome, reason: str = "") -> None:
        self.running.discard(leaf)
        if leaf in self.pending:
            self.pending.remove(leaf)
        self.settled[leaf] = Settled(outcome, reason)
        if outcome is Outcome.FAILED and self.fail_fast and not self.stopped:
            self.stopped = f"not started: `{leaf}` failed (fail_fast)"

    def skip(self, node_id: str, reason: str) -> list[str]:
        """Settle every pending leaf under `node_id` as skipped; returns them."""
        skipped = [
            leaf for leaf in self._leaves_under[node_id] if leaf in self.pending or leaf in self.running
        ]
        for leaf in skipped:
            self.finish(leaf, Outcome.SKIPPED, reason)
        return skipped

    def stop(self, reason: str) -> None:
        """Start nothing more (a timeout or an interrupt); pending leaves settle as not run."""
        self.stopped = self.stopped or reason

    def _deps_met(self, leaf: str) -> bool:
        return all(self._node_settled(dep) for dep in self._waits[leaf])

    def _node_settled(self, node_id: str) -> bool:
        return all(
            leaf in self.settled and self.settled[leaf].outcome.satisfies
            for leaf in self._leaves_under[node_id]
        )

    def _group_room(self, leaf: str) -> bool:
        for group in self._groups[leaf]:
            limit = self.graph.group_limit(group)
            if limit is not None and sum(1 for r in self.running if group in self._groups[r]) >= limit:
                return False
        return True

    def _fits(self, leaf: str) -> bool:
        """Whether the leaf's reservation fits beside the running ones (always, on an idle run)."""
        if not self.running:
            return True
        wanted = self.reservations[leaf]
        for kind, limit in (("memory", self.memory_limit), ("cpu", self.cpu_limit)):
            amount = getattr(wanted, kind)
            if limit is None or amount is None:
                continue
            held = sum(getattr(self.reservations[r], kind) or 0 for r in self.running)
            if held + amount > limit * (1 + 1e-9):  # 0.1 + 0.2 CPUs fit in 0.3
                return False
        return True

    def take_waits(self) -> list[str]:
        """One line for each leaf newly held back because its reservation does not fit."""
        lines, self._new_waits = self._new_waits, []
        return lines

    def _waiting_line(self, leaf: str) -> str:
        """e.g. `b` waits for room: needs 600Mi memory; 600Mi of 1Gi reserved by `a`."""
        wanted = self.reservations[leaf]
        parts = []
        for kind, limit, show in (
            ("memory", self.memory_limit, format_memory),
            ("cpu", self.cpu_limit, format_cpu),
        ):
            amount = getattr(wanted, kind)
            holders = sorted(r for r in self.running if getattr(self.reservations[r], kind))
            held = sum(getattr(self.reservations[r], kind) for r in holders)
            if limit is None or amount is None or held + amount <= limit * (1 + 1e-9):
                continue
            names = ", ".join(f"`{r}`" for r in holders[:5]) + (
                f" and {len(holders) - 5} more" if len(holders) > 5 else ""
            )
            parts.append(f"needs {show(amount)} {kind}; {show(held)} of {show(limit)} reserved by {names}")
        return f"`{leaf}` waits for room: " + "; ".join(parts)

    def _block_unreachable(self) -> None:
        """A leaf whose dependency failed or did not run can never start: settle it as not run."""
        changed = True
        while changed:
            changed = False
            for leaf in list(self.pending):
                for dep in self._waits[leaf]:
                    bad = next(
                        (
                            under
                            for under in self._leaves_under[dep]
                            if under in self.settled and not self.settled[under].outcome.satisfies
                        ),
                        None,
                    )
                    if bad is not None:
                        self.finish(
                            leaf, Outcome.NOT_RUN, f"not started: depends on `{dep}`, which did not succeed"
                        )
                        changed = True
                        break

    def _settle_pending(self, outcome: Outcome, reason: str) -> None:
        for leaf in list(self.pending):
            self.finish(leaf, outcome, reason)


def _priority(value: object) -> float:
    return float(value) if isinstance(value, int) else math.inf
