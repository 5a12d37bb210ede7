"""Plans and summaries for a person at a terminal."""

from __future__ import annotations

import json
import shutil
import sys

from flows.console import escape_controls
from flows.workflow.plan import HookPlan, Plan
from flows.workflow.report import RunSummary
from flows.workflow.units import format_duration


def plan_text(plan: Plan, *, dry_run: bool = False) -> str:
    lines = [
        f"{'Dry run of' if dry_run else 'Plan for'} {plan.workflow} — environment {plan.environment}, "
        f"up to {plan.parallel} step(s) at once, on failure: {plan.strategy}",
    ]
    if plan.resources:
        lines.append(f"resources: {plan.resources}")
    if plan.parameters:
        shown = ", ".join(
            f"{k}={json.dumps(v) if not isinstance(v, str) else escape_controls(v)}"
            for k, v in plan.parameters.items()
        )
        lines.append(f"parameters: {shown}")
    if plan.prerequisites:
        lines.append("prerequisites (exit 2 if one fails):")
        lines.extend(_hook_lines(plan.prerequisites, "  "))
    if plan.health_checks:
        which = (
            f"health checks {', '.join(plan.health_checks)} (each required)"
            if isinstance(plan.health_checks, list)
            else "health checks (`health check`)"
        )
        lines.append(
            f"{which}, environment {plan.environment}: before the steps (unhealthy: exit 2) "
            "and after them (unhealthy: health_check_failed)"
        )
    for step in plan.steps:
        indent = "  " * (step.depth + 1)
        facts = []
        if step.kind == "group":
            limit = f" ≤{step.limit}" if step.limit else ""
            facts.append("group, in order" if step.in_order else f"group, parallel{limit}")
        if step.depends_on:
            facts.append("after " + ", ".join(step.depends_on))
        if step.priority is not None:
            facts.append(f"priority {step.priority}")
        if step.timeout is not None:
            facts.append(f"timeout {format_duration(step.timeout)}")
        if step.delays:
            waits = ", ".join(format_duration(d) for d in step.delays)
            facts.append(f"retries {len(step.delays)} (waits {waits}, jittered)")
        if step.reserves:
            facts.append(f"reserves {step.reserves}")
        if step.approval:
            facts.append("waits for approval (`approve RUN`)")
        if step.health_check and step.kind != "group":
            facts.append("health check")
        if step.decided_at_run:
            facts.append("condition decided at run time (reads step outputs)")
        status = f"SKIP ({step.skip})" if step.skip else ""
        lines.append(
            f"{indent}{step.id}"
            + (f"  [{'; '.join(facts)}]" if facts else "")
            + (f"  {status}" if status else "")
        )
        if step.text is not None and not step.skip:
            lines.extend(_command_lines(step.text, step.deferred, indent + "  "))
        for section, hooks in step.hooks.items():
            lines.append(f"{indent}  {section}:")
            lines.extend(_hook_lines(hooks, indent + "    "))
    for section, hooks in plan.hooks.items():
        when = f" (when {plan.rollback_when})" if section == "rollback" and plan.rollback_when else ""
        lines.append(f"{section.replace('post_', 'post_execution.').replace('_', ' ')}{when}:")
        lines.extend(_hook_lines(hooks, "  "))
    if plan.recovery:
        lines.append("recovery strategies (at the end of a failed run):")
        lines.extend(f"  {line}" for line in plan.recovery)
    if plan.log_aggregation:
        lines.append(f"log aggregation: every line of the run as JSON lines to {plan.log_aggregation}")
    if plan.unenforced:
        lines.append("accepted, not yet enforced: " + "; ".join(plan.unenforced))
    for warning in plan.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _hook_lines(hooks: list[HookPlan], indent: str) -> list[str]:
    lines = []
    for hook in hooks:
        lines.append(f"{indent}{hook.id}")
        lines.extend(_command_lines(hook.text, hook.deferred, indent + "  "))
    return lines


def _command_lines(text: str, deferred: bool, indent: str) -> list[str]:
    """`$ first line` then the rest aligned under it, as a reader would type them."""
    prefix = "(rendered at run time) " if deferred else ""
    return [
        f"{indent}{'$' if n == 0 else ' '} {prefix if n == 0 else ''}{line}"
        for n, line in enumerate(text.rstrip("\n").splitlines() or [""])
    ]


def summary_table(summary: RunSummary) -> str:
    """A plain table: readable in a terminal, a log file and CI output alike."""
    rows = summary.rows()
    headers = ["step", "state", "attempts", "duration", "exit code", "note"]
    width = shutil.get_terminal_size((120, 20)).columns if sys.stdout.isatty() else 160
    cells = [[str(r[h]) for h in headers] for r in rows]
    sizes = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers[:-1])]
    fixed = sum(sizes) + 2 * len(sizes)
    note_width = max(20, width - fixed)
    out = ["  ".join(h.ljust(s) for h, s in zip(headers[:-1], sizes, strict=True)) + "  note"]
    for c in cells:
        note = c[-1] if len(c[-1]) <= note_width else c[-1][: note_width - 1] + "…"
        out.append("  ".join(v.ljust(s) for v, s in zip(c[:-1], sizes, strict=True)) + "  " + note)
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(summary.counts().items()))
    out.append(
        f"{summary.workflow}: {summary.state} in {format_duration(summary.duration)} ({counts or 'no steps'})"
    )
    if summary.message:
        out.append(summary.message)
    if summary.aggregated_log:
        out.append(f"aggregated log (JSON lines): {summary.aggregated_log}")
    return "\n".join(line.rstrip() for line in out)
