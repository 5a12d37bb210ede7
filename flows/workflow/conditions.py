"""Named outcomes of a finished run, for `rollback.conditions` and `recovery.strategies`. Pure.

`check_condition` runs at validation (a name the engine cannot detect is an error with
file:line, never a silent no-op); `holds` answers for a finished run from its summary.

A health check is a step marked `health_check: true` (a marked group: each of its steps), or
the checks `monitoring.health_checks` runs before and after the steps (summary section
`health_checks`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flows.errors import ValidationError
from flows.workflow.graph import Graph
from flows.workflow.load import LoadedWorkflow
from flows.workflow.report import RunSummary, StepOutcome

HEALTH_SECTION = "health_checks"


@dataclass(frozen=True)
class Condition:
    meaning: str
    target: str | None  # what `:NAME` may name: "step" or "prerequisite"; None: takes no name


CONDITIONS = {
    "step_failed": Condition("a step failed (or timed out); `step_failed:NAME`: that step or group", "step"),
    "step_timed_out": Condition(
        "a step was killed by its `timeout`; `step_timed_out:NAME`: that one", "step"
    ),
    "health_check_failed": Condition(
        "a step marked `health_check: true` failed, or `monitoring.health_checks` were unhealthy after "
        "the steps (before them it is `prerequisite_failed`)",
        None,
    ),
    "prerequisite_failed": Condition("a prerequisite failed (exit 2); `:NAME`: that one", "prerequisite"),
    "run_timed_out": Condition("the run's `--timeout` ran out before every step started", None),
    "deployment_timeout": Condition("`run_timed_out` or `step_timed_out`: the run took too long", None),
}


def is_health_check(graph: Graph, node_id: str) -> bool:
    """Whether the step is a health check: marked itself or inside a marked group."""
    return any(graph.nodes[n].step.health_check for n in (node_id, *graph.ancestors(node_id)))


def health_check_steps(graph: Graph) -> set[str]:
    """Leaves that are health checks."""
    return {leaf for leaf in graph.leaves if is_health_check(graph, leaf)}


def has_health_check(loaded: LoadedWorkflow, graph: Graph) -> bool:
    monitoring = loaded.spec.monitoring
    return bool(health_check_steps(graph)) or bool(monitoring and monitoring.health_checks)


def check_condition(
    loaded: LoadedWorkflow,
    graph: Graph,
    text: str,
    loc: tuple[Any, ...],
    *,
    prerequisites: Iterable[str] = (),
    kinds: Iterable[str] = CONDITIONS,
    why_not: str = "",
    section: str = "recovery",
) -> None:
    """Raise a `ValidationError` at `loc` unless `text` names a detectable outcome of `kinds`."""
    where = loaded.where(loc)
    kinds = list(kinds)
    kind, _, name = text.partition(":")
    kind, name = kind.strip(), name.strip()
    if kind in CONDITIONS and kind not in kinds:
        raise ValidationError(f"{section} condition `{kind}` {why_not}", where=where)
    condition = CONDITIONS.get(kind)
    if condition is None:
        hint = difflib.get_close_matches(kind, kinds, n=1)
        raise ValidationError(
            f"{section} condition `{text}` is not one the engine can detect (it knows {', '.join(kinds)})"
            + (f" — did you mean `{hint[0]}`?" if hint else ""),
            where=where,
        )
    if name and condition.target is None:
        raise ValidationError(f"condition `{kind}` takes no `:NAME`", where=where)
    if condition.target == "step" and name and name not in graph.nodes:
        raise ValidationError(f"condition `{text}` names `{name}`, which is not a step", where=where)
    if condition.target == "prerequisite" and name and name not in set(prerequisites):
        raise ValidationError(f"condition `{text}` names `{name}`, which is not a prerequisite", where=where)
    if kind == "health_check_failed" and not has_health_check(loaded, graph):
        raise ValidationError(
            "condition `health_check_failed` needs a health check: mark the step that checks health "
            "with `health_check: true`, or set `monitoring.health_checks: true`",
            where=where,
        )


def holds(text: str, summary: RunSummary, graph: Graph, run_timed_out: bool) -> bool:
    """Whether the condition is true of the finished run."""
    kind, _, name = text.partition(":")
    kind, name = kind.strip(), name.strip()
    main = [s for s in summary.steps if s.section == "steps"]
    if kind == "prerequisite_failed":
        return any(
            s.failed and (not name or s.step == name) for s in summary.steps if s.section == "prerequisites"
        )
    if kind == "run_timed_out":
        return run_timed_out
    if kind == "deployment_timeout":
        return run_timed_out or any(s.state == "TimedOut" for s in main)
    if kind == "health_check_failed":
        marked = health_check_steps(graph)
        return any(s.failed and s.step in marked for s in main) or any(
            s.failed for s in summary.steps if s.section == HEALTH_SECTION
        )
    wanted = set(graph.leaves_under(name)) | {name} if name else None

    def matches(outcome: StepOutcome) -> bool:
        return wanted is None or outcome.step in wanted

    if kind == "step_timed_out":
        return any(s.state == "TimedOut" and matches(s) for s in main)
    return any(s.failed and matches(s) for s in main)


def matching(conditions: Iterable[str], summary: RunSummary, graph: Graph, run_timed_out: bool) -> list[str]:
    """The conditions that hold, in their order."""
    return [c for c in conditions if holds(c, summary, graph, run_timed_out)]


# A failed prerequisite ends the run before any step ran: there is nothing to roll back.
ROLLBACK_CONDITIONS = [k for k in CONDITIONS if k != "prerequisite_failed"]


def check_rollback(loaded: LoadedWorkflow, graph: Graph) -> list[str]:
    """Validate `rollback.conditions`; warnings for conditions that cannot take effect."""
    rollback = loaded.spec.rollback
    if rollback is None:
        return []
    for n, text in enumerate(rollback.conditions):
        check_condition(
            loaded,
            graph,
            text,
            ("rollback", "conditions", n),
            kinds=ROLLBACK_CONDITIONS,
            why_not="cannot trigger a rollback: a failed prerequisite stops the run before any step "
            "(use it in `recovery.strategies`)",
            section="rollback",
        )
    if rollback.conditions and not (rollback.enabled and rollback.automatic):
        off = "disabled" if not rollback.enabled else "not automatic"
        return [
            f"{loaded.where(('rollback', 'conditions'))}: `rollback.conditions` have no effect: the rollback "
            f"is {off} (it runs only as a recovery action)"
        ]
    return []


def rollback_when(loaded: LoadedWorkflow) -> str:
    """When the automatic rollback runs, as `plan` says it; empty when it never does."""
    rollback = loaded.spec.rollback
    if rollback is None or not (rollback.enabled and rollback.automatic and rollback.steps):
        return ""
    return " or ".join(rollback.conditions) if rollback.conditions else "any failure"


def check_health_marks(loaded: LoadedWorkflow, graph: Graph) -> None:
    """`health_check: true` belongs on steps: on a hook or rollback step nothing would read it."""
    hooks = [h for section in graph.sections.values() for h in section]
    hooks += [h for node in graph.nodes.values() for section in node.hooks.values() for h in section]
    for hook in hooks:
        if hook.step.health_check:
            raise ValidationError(
                f"`health_check: true` on `{hook.id}` has no effect: only a step of `steps` (or a "
                "group of them) can be a health check",
                where=loaded.where((*hook.loc, "health_check")),
            )
