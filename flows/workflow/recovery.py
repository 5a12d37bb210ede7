"""`recovery.strategies`: conditions the engine detects at the end of a run -> actions, in order.

`check_recovery` is pure (run by `validate` and before every run): a condition or action that
cannot be mapped to something real is a validation error with file:line, never a silent no-op.
`recover` runs at the end of a failed run, after `rollback` and `on_failure`, before
`post_execution.failure`; what it did is in the summary (section `recovery`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flows.errors import ValidationError
from flows.workflow.graph import Graph, Hook
from flows.workflow.load import LoadedWorkflow
from flows.workflow.report import RunSummary, StepOutcome

if TYPE_CHECKING:
    from flows.workflow.execute import WorkflowRun
    from flows.workflow.notifications import RunNotifier

# What counts as a health check: a step whose name contains this (`health_check`, `api_health`).
HEALTH_MARK = "health"


@dataclass(frozen=True)
class Condition:
    meaning: str
    target: str | None  # what `:NAME` may name: "step" or "prerequisite"; None: takes no name


CONDITIONS = {
    "step_failed": Condition("a step failed (or timed out); `step_failed:NAME`: that step or group", "step"),
    "step_timed_out": Condition(
        "a step was killed by its `timeout`; `step_timed_out:NAME`: that one", "step"
    ),
    "health_check_failed": Condition(f"a step whose name contains `{HEALTH_MARK}` failed", None),
    "prerequisite_failed": Condition("a prerequisite failed (exit 2); `:NAME`: that one", "prerequisite"),
    "run_timed_out": Condition("the run's `--timeout` ran out before every step started", None),
}

# Actions that are not steps of `recovery.steps`.
BUILTIN_ACTIONS = {
    "rollback": "run the workflow's `rollback.steps` (unless automatic rollback already ran them)",
    "notify": "send a `recovery` notification to `notifications.channels`",
}


def check_recovery(loaded: LoadedWorkflow, graph: Graph) -> None:
    """Every condition is one the engine detects; every action is a recovery step or a built-in."""
    spec = loaded.spec
    if spec.recovery is None:
        return
    for index, step in enumerate(spec.recovery.steps):
        if step.name is None or step.name in BUILTIN_ACTIONS:
            why = (
                "a name, which actions use to run it" if step.name is None else "a name other than a built-in"
            )
            raise ValidationError(
                f"a step of `recovery.steps` needs {why}", where=loaded.where(("recovery", "steps", index))
            )
    steps = recovery_steps(loaded, graph)
    prerequisites = {p.name for p in spec.prerequisites}
    for index, strategy in enumerate(spec.recovery.strategies):
        here = ("recovery", "strategies", index)
        if not strategy.conditions or not strategy.actions:
            missing = "conditions" if not strategy.conditions else "actions"
            raise ValidationError(
                f"recovery strategy `{strategy.name}` has no {missing} — it could never do anything",
                where=loaded.where(here),
            )
        for n, text in enumerate(strategy.conditions):
            _check_condition(loaded, graph, prerequisites, text, (*here, "conditions", n))
        for n, action in enumerate(strategy.actions):
            where = loaded.where((*here, "actions", n))
            if action in steps:
                continue
            if action == "rollback" and not (spec.rollback and spec.rollback.enabled and spec.rollback.steps):
                raise ValidationError(
                    "action `rollback` needs an enabled `rollback` section with steps", where=where
                )
            if action == "notify" and not (spec.notifications and spec.notifications.channels):
                raise ValidationError("action `notify` needs `notifications.channels`", where=where)
            if action not in BUILTIN_ACTIONS:
                known = sorted(steps) + sorted(BUILTIN_ACTIONS)
                hint = difflib.get_close_matches(action, known, n=1)
                raise ValidationError(
                    f"recovery action `{action}` is neither a step of `recovery.steps` nor a built-in "
                    f"({', '.join(sorted(BUILTIN_ACTIONS))})"
                    + (
                        f" — did you mean `{hint[0]}`?"
                        if hint
                        else f" — add a step named `{action}` to `recovery.steps`"
                    ),
                    where=where,
                )


def _check_condition(
    loaded: LoadedWorkflow, graph: Graph, prerequisites: set[str], text: str, loc: tuple[Any, ...]
) -> None:
    where = loaded.where(loc)
    kind, _, name = text.partition(":")
    condition = CONDITIONS.get(kind.strip())
    if condition is None:
        hint = difflib.get_close_matches(kind, list(CONDITIONS), n=1)
        raise ValidationError(
            f"recovery condition `{text}` is not one the engine can detect (it knows "
            f"{', '.join(CONDITIONS)})" + (f" — did you mean `{hint[0]}`?" if hint else ""),
            where=where,
        )
    name = name.strip()
    if name and condition.target is None:
        raise ValidationError(f"condition `{kind}` takes no `:NAME`", where=where)
    if condition.target == "step" and name and name not in graph.nodes:
        raise ValidationError(f"condition `{text}` names `{name}`, which is not a step", where=where)
    if condition.target == "prerequisite" and name and name not in prerequisites:
        raise ValidationError(f"condition `{text}` names `{name}`, which is not a prerequisite", where=where)
    if kind == "health_check_failed" and not any(HEALTH_MARK in n.lower() for n in graph.leaves):
        raise ValidationError(
            f"condition `health_check_failed` needs a health check: a step whose name contains `{HEALTH_MARK}`",
            where=where,
        )


def recovery_steps(loaded: LoadedWorkflow, graph: Graph) -> dict[str, list[Hook]]:
    """Each top-level step of `recovery.steps` by name -> the hooks it runs (a group: all of them)."""
    spec = loaded.spec
    named: dict[str, list[Hook]] = {}
    for index, step in enumerate(spec.recovery.steps if spec.recovery else []):
        if step.name:
            here = ("recovery", "steps", index)
            named[step.name] = [h for h in graph.sections["recovery"] if h.loc[:3] == here]
    return named


def strategy_lines(loaded: LoadedWorkflow) -> list[str]:
    """One line per strategy, as `plan` shows it."""
    recovery = loaded.spec.recovery
    if recovery is None:
        return []
    off = "" if recovery.enabled else " (disabled)"
    return [
        f"{s.name}{off}: when {' or '.join(s.conditions)} → {', '.join(s.actions)}"
        for s in recovery.strategies
    ]


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
    if kind == "health_check_failed":
        return any(s.failed and HEALTH_MARK in s.step.lower() for s in main)
    wanted = set(graph.leaves_under(name)) | {name} if name else None

    def matches(outcome: StepOutcome) -> bool:
        return wanted is None or outcome.step in wanted

    if kind == "step_timed_out":
        return any(s.state == "TimedOut" and matches(s) for s in main)
    return any(s.failed and matches(s) for s in main)


def recover(run: WorkflowRun, notifier: RunNotifier) -> list[dict[str, Any]]:
    """Evaluate every strategy against the run so far and perform the actions of those that hold.

    Returns (and puts in `summary.recovery`) one entry per strategy that fired."""
    spec = run.loaded.spec
    if spec.recovery is None or not spec.recovery.enabled:
        return []
    steps = recovery_steps(run.loaded, run.graph)
    fired: list[dict[str, Any]] = []
    rolled_back = any(s.section == "rollback" for s in run.summary.steps)
    for strategy in spec.recovery.strategies:
        matched = [c for c in strategy.conditions if holds(c, run.summary, run.graph, run.timed_out)]
        if not matched:
            continue
        run.logger.warning(
            f"recovery `{strategy.name}`: {', '.join(matched)} → {', '.join(strategy.actions)}"
        )
        done = []
        for action in strategy.actions:
            done.append({"action": action, "result": _perform(run, notifier, action, steps, rolled_back)})
            rolled_back = rolled_back or action == "rollback"
        fired.append({"strategy": strategy.name, "conditions": matched, "actions": done})
    run.summary.recovery = fired
    return fired


def _perform(
    run: WorkflowRun, notifier: RunNotifier, action: str, steps: dict[str, list[Hook]], rolled_back: bool
) -> str:
    if action in steps:
        outcomes = run.run_hooks(steps[action], "recovery")
        return "Failed" if any(o.failed for o in outcomes) else "Completed"
    if action == "rollback":
        if rolled_back:
            run.logger.info("recovery action `rollback`: the rollback steps already ran in this run")
            return "already ran"
        outcomes = run.run_hooks(run.graph.sections["rollback"], "rollback")
        notifier.emit("rolled_back", failed=[s.step for s in run.summary.steps if s.failed])
        return "Failed" if any(o.failed for o in outcomes) else "Completed"
    # notify: sent whatever `notifications.events` lists; the strategy asked for it.
    from flows.notify import notify_channels
    from flows.workflow.notifications import message

    failed = [s.step for s in run.summary.steps if s.failed]
    title, body = message("recovery", notifier.workflow, notifier.environment, notifier.run_id, failed=failed)
    missing = notify_channels(notifier.channels, title, body, run.logger.warning, notify_type="warning")
    run.logger.info(f"recovery action `notify`: sent to {', '.join(notifier.channels)}")
    return f"no URL for {', '.join(missing)}" if missing else "sent"
