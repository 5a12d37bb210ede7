"""`recovery.strategies`: conditions the engine detects at the end of a run -> actions, in order.

`check_recovery` is pure (run by `validate` and before every run): a condition or action that
cannot be mapped to something real is a validation error with file:line, never a silent no-op.
`recover` runs at the end of a failed run, after `rollback` and `on_failure`, before
`post_execution.failure`; what it did is in the summary (section `recovery`).
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from flows.errors import ValidationError
from flows.workflow.conditions import check_condition, matching
from flows.workflow.graph import Graph, Hook
from flows.workflow.load import LoadedWorkflow

if TYPE_CHECKING:
    from flows.workflow.execute import WorkflowRun
    from flows.workflow.notifications import RunNotifier

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
            check_condition(loaded, graph, text, (*here, "conditions", n), prerequisites=prerequisites)
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
        matched = matching(strategy.conditions, run.summary, run.graph, run.timed_out)
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
