"""Graph + bound parameters -> plan: what runs, in which order, with what limits. Pure.

`plan` and `run --dry-run` print it; the Prefect flow follows it, deciding at run time only
what depends on step outputs (conditions and commands that read `.outputs`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from flows.backoff import backoff_delays
from flows.workflow.conditions import is_health_check, rollback_when
from flows.workflow.dispatch import reservation_of
from flows.workflow.graph import Graph, Hook, Node
from flows.workflow.load import LoadedWorkflow, Location
from flows.workflow.logship import planned_location
from flows.workflow.params import Bound
from flows.workflow.pools import describe_limits
from flows.workflow.recovery import strategy_lines
from flows.workflow.spec import Retry, Step, Workflow
from flows.workflow.template import compile_template
from flows.workflow.units import format_cpu, format_memory

DEFAULT_PARALLEL = 8


@dataclass(frozen=True)
class StepPlan:
    """One step as it will run."""

    id: str
    kind: str  # command | script | group
    depth: int
    depends_on: tuple[str, ...]
    text: str | None  # the rendered command, or its template when it reads outputs
    deferred: bool  # rendered only at run time (reads `.outputs`)
    skip: str | None  # why it will not run, when known now
    decided_at_run: bool  # a `when` that reads outputs
    timeout: float | None
    delays: tuple[float, ...]  # one per retry, before jitter
    priority: int | None
    limit: int | None  # groups: children at once
    in_order: bool  # groups: children one after another
    approval: bool = False  # waits for an operator's decision (flows/approval.py)
    health_check: bool = False  # its failure is `health_check_failed` (conditions.py)
    reserves: str | None = None  # leaves: memory / cpu held while it runs (dispatch.py)
    unenforced: tuple[str, ...] = ()
    hooks: dict[str, list[HookPlan]] = field(default_factory=dict)


@dataclass(frozen=True)
class HookPlan:
    """A hook, prerequisite or rollback step with its command as it would run."""

    id: str
    text: str
    deferred: bool  # reads `.outputs`: rendered when it runs


@dataclass
class Plan:
    workflow: str
    environment: str
    parameters: dict[str, Any]
    steps: list[StepPlan]
    hooks: dict[str, list[HookPlan]]
    parallel: int
    strategy: str
    unenforced: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    prerequisites: list[HookPlan] = field(default_factory=list)
    recovery: list[str] = field(default_factory=list)  # one line per strategy
    resources: str = ""  # memory / cpu limits, and whether runs share them (pools.py)
    log_aggregation: str | None = None  # monitoring.log_aggregation: where each run's JSON lines go
    rollback_when: str = ""  # conditions of the automatic rollback; empty: it never runs by itself
    health_checks: bool | list[str] = False  # monitoring.health_checks: before and after the steps

    def to_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "environment": self.environment,
            "parameters": self.parameters,
            "parallel": self.parallel,
            "strategy": self.strategy,
            "resources": self.resources,
            "steps": [
                s.__dict__ | {"depends_on": list(s.depends_on), "delays": list(s.delays)} for s in self.steps
            ],
            "hooks": self.hooks,
            "recovery": self.recovery,
            "log_aggregation": self.log_aggregation,
            "rollback_when": self.rollback_when,
            "health_checks": self.health_checks,
            "accepted_not_yet_enforced": self.unenforced,
            "warnings": self.warnings,
        }


def retry_delays(
    retry: Retry | None, rng: random.Random | None = None, *, jitter: bool = True
) -> list[float]:
    """The wait before each retry: backoff, capped, then jittered.

    Prefect ignores `retry_jitter_factor` for tasks, so the jitter is applied here and the
    task gets the explicit list.
    """
    if retry is None or retry.attempts <= 1:
        return []
    return backoff_delays(
        retry.attempts, retry.delay, retry.backoff, retry.jitter if jitter else 0.0, retry.max_delay, rng
    )


def default_retry(spec: Workflow) -> Retry | None:
    handling = spec.error_handling
    if handling.strategy == "retry" and handling.max_retries > 0:
        return Retry(attempts=handling.max_retries + 1, delay=handling.retry_delay)
    return None


def effective_parallel(spec: Workflow, requested: int | None) -> int:
    limits = [requested or DEFAULT_PARALLEL]
    if spec.resource_limits and spec.resource_limits.max_parallel:
        limits.append(spec.resource_limits.max_parallel)
    return max(1, min(limits))


def step_text(step: Step) -> str:
    return step.command if step.command is not None else (step.script or "")


def render_step(loaded: LoadedWorkflow, step: Step, loc: Location, context: dict[str, Any]) -> str:
    """The command exactly as the shell will receive it (template values quoted)."""
    key = "command" if step.command is not None else "script"
    template = compile_template(
        step_text(step), where=loaded.where((*loc, key)), line=loaded.line((*loc, key))
    )
    return template.render(context, shell=True)


def skip_reason(loaded: LoadedWorkflow, step: Step, loc: Location, context: dict[str, Any]) -> str | None:
    """Why the step's own `when` / `condition` keeps it from running, or None."""
    for key in ("when", "condition"):
        source = getattr(step, key)
        if source is None:
            continue
        template = compile_template(source, where=loaded.where((*loc, key)), line=loaded.line((*loc, key)))
        if not template.truth(context):
            return f"`{key}` is false: {' '.join(source.split())[:80]}"
    return None


def reads_outputs(loaded: LoadedWorkflow, step: Step, loc: Location, keys: tuple[str, ...]) -> bool:
    for key in keys:
        source = getattr(step, key)
        if source is not None and compile_template(source, where=loaded.where((*loc, key))).output_names():
            return True
    return False


def unenforced_step_fields(step: Step) -> list[str]:
    """Fields parsed now whose behaviour comes with later work; never silently ignored.

    None are left on steps; the list stays so the next such field is reported, not ignored."""
    return []


def unenforced_workflow_fields(spec: Workflow) -> list[str]:
    """Workflow keys parsed but not acted on (`plan` lists them, a run warns); none at present."""
    return []


def plan_workflow(loaded: LoadedWorkflow, graph: Graph, bound: Bound, *, parallel: int | None = None) -> Plan:
    spec = loaded.spec
    context = bound.context
    fallback_retry = default_retry(spec)
    skipped: dict[str, str] = {}
    steps: list[StepPlan] = []
    for node in graph.nodes.values():
        steps.append(_plan_node(loaded, graph, node, context, skipped, fallback_retry))
    unenforced = unenforced_workflow_fields(spec)
    for plan in steps:
        unenforced.extend(f"{plan.id}: {key}" for key in plan.unenforced)
    return Plan(
        workflow=spec.name,
        environment=str(context.get("environment")),
        parameters=bound.shown_parameters(),
        steps=steps,
        hooks={
            section: [plan_hook(loaded, h, context) for h in hooks]
            for section, hooks in graph.sections.items()
            if hooks
        },
        prerequisites=[
            plan_hook(
                loaded, Hook(p.name, Step(name=p.name, command=p.command), ("prerequisites", i)), context
            )
            for i, p in enumerate(spec.prerequisites)
        ],
        parallel=effective_parallel(spec, parallel),
        strategy=spec.error_handling.strategy,
        unenforced=unenforced,
        warnings=list(bound.warnings),
        recovery=strategy_lines(loaded),
        resources=describe_limits(spec.resource_limits),
        log_aggregation=planned_location(spec),
        rollback_when=rollback_when(loaded),
        health_checks=spec.monitoring.health_checks if spec.monitoring else False,
    )


def _plan_node(
    loaded: LoadedWorkflow,
    graph: Graph,
    node: Node,
    context: dict[str, Any],
    skipped: dict[str, str],
    fallback_retry: Retry | None,
) -> StepPlan:
    step = node.step
    parent_skip = skipped.get(node.parent) if node.parent else None
    decided_at_run = reads_outputs(loaded, step, node.loc, ("when", "condition"))
    skip = parent_skip
    if skip is None and not decided_at_run:
        own = skip_reason(loaded, step, node.loc, context)
        skip = own
    if skip is not None:
        skipped[node.id] = skip if parent_skip is None else parent_skip
    text, deferred = None, False
    if not step.is_group:
        deferred = reads_outputs(loaded, step, node.loc, ("command", "script"))
        text = step_text(step) if deferred or skip else render_step(loaded, step, node.loc, context)
    timeout = graph.inherited(node.id, "timeout")
    return StepPlan(
        id=node.id,
        kind="group" if step.is_group else ("command" if step.command is not None else "script"),
        depth=len(graph.ancestors(node.id)),
        depends_on=tuple(node.deps),
        text=text,
        deferred=deferred,
        skip=skip,
        decided_at_run=decided_at_run,
        timeout=timeout if isinstance(timeout, float) else None,
        # The plan shows the delays before jitter, so it reads the same every time.
        delays=tuple(retry_delays(graph.retry_of(node.id, fallback_retry), jitter=False))
        if not step.is_group
        else (),
        priority=graph.inherited(node.id, "priority"),  # type: ignore[arg-type]
        limit=graph.group_limit(node.id) if step.is_group else None,
        in_order=step.is_group and not (step.parallel or step.parallel_limit is not None),
        approval=step.manual_approval,
        health_check=is_health_check(graph, node.id),
        reserves=None if step.is_group else describe_reservation(graph, node.id),
        unenforced=tuple(unenforced_step_fields(step)),
        hooks={
            section: [plan_hook(loaded, h, context) for h in hooks] for section, hooks in node.hooks.items()
        },
    )


def describe_reservation(graph: Graph, leaf: str) -> str | None:
    """`memory 512Mi, cpu 1`, or None when the step reserves nothing."""
    held = reservation_of(graph, leaf)
    parts = [f"memory {format_memory(held.memory)}"] if held.memory is not None else []
    parts += [f"cpu {format_cpu(held.cpu)}"] if held.cpu is not None else []
    return ", ".join(parts) or None


def plan_hook(loaded: LoadedWorkflow, hook: Hook, context: dict[str, Any]) -> HookPlan:
    deferred = reads_outputs(loaded, hook.step, hook.loc, ("command", "script"))
    text = step_text(hook.step) if deferred else render_step(loaded, hook.step, hook.loc, context)
    return HookPlan(id=hook.id, text=text, deferred=deferred)
