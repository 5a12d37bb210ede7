"""`monitoring.health_checks: true`: opsflow's health checks before and after a workflow's steps.

The checks are those of `health check` for the run's environment (PostgreSQL, Redis, the
Prefect API, disks, configured endpoints; `health_required` decides what is fatal), each a task
run of the run, recorded in `health_check_results` like any other health check. Unhealthy
before the steps: nothing runs, the run ends like a failed prerequisite (exit 2). Unhealthy
after them: the run fails and `health_check_failed` holds for `rollback.conditions` and
`recovery`. Degraded (a check down that is not required) is logged, not fatal.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from flows.errors import ValidationError
from flows.workflow.conditions import HEALTH_SECTION
from flows.workflow.report import StepOutcome

if TYPE_CHECKING:
    from flows.health.checks import Check
    from flows.workflow.execute import WorkflowRun


def run_health_checks(run: WorkflowRun, when: str) -> StepOutcome:
    """Run the checks now (`when`: before | after) and add their outcome to the summary."""
    from flows.health.checks import plan_checks
    from flows.health.flow import check_all, record_results
    from flows.health.status import headline
    from flows.local_server import configured_api_url
    from flows.maintenance.settings import load_settings

    step_id = f"health_checks:{when}"
    started = time.time()
    run.logger.info(f"health checks {when} the steps (environment {run.summary.environment})")
    # Before the steps the checks gate the run like a prerequisite (`prerequisite_failed`);
    # after them they judge it (`health_check_failed`).
    section = "prerequisites" if when == "before" else HEALTH_SECTION
    # Bad settings or an unknown check name are configuration errors: exit 3, not a failed check.
    settings = load_settings(run.summary.environment)
    checks = chosen(plan_checks(settings, configured_api_url()), run.loaded.spec.monitoring.health_checks)
    try:
        results, document = check_all(checks, settings, run.logger, prefix=f"{when}-")
    except Exception as exc:  # a check's task run itself failed (not the check): the outcome says so
        reason = f"health checks could not run: {type(exc).__name__}: {exc}"
        return _settle(run, StepOutcome(step_id, "Failed", section, 1, time.time() - started, None, reason))
    try:
        record_results(results, document, f"{run.summary.workflow_id}:{when}")
    except Exception as exc:  # the record is for operators; it must not change the run's result
        run.logger.warning(f"health check results not recorded: {type(exc).__name__}: {exc}")
    line = headline(document)
    healthy = document["exit_code"] == 0
    (run.logger.info if healthy else run.logger.error)(f"health checks {when} the steps: {line}")
    outcome = StepOutcome(
        step_id,
        "Completed" if healthy else "Failed",
        section,
        1,
        time.time() - started,
        document["exit_code"],
        "" if healthy else line,
    )
    return _settle(run, outcome)


def chosen(checks: list[Check], wanted: bool | list[str]) -> list[Check]:
    """All checks as configured (`true`), or only those named or of the kinds listed, each required."""
    if wanted is True:
        return checks
    names = {c.name for c in checks} | {c.kind for c in checks}
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ValidationError(
            f"monitoring.health_checks names {', '.join(unknown)}, which is no check here "
            f"(there are {', '.join(sorted(names))}; endpoints come from OPSFLOW_HEALTH_ENDPOINTS)"
        )
    picked = [c for c in checks if c.name in wanted or c.kind in wanted]
    for check in picked:
        check.required = True
    return picked


def _settle(run: WorkflowRun, outcome: StepOutcome) -> StepOutcome:
    run.recorder.settled(outcome, run)
    return run.summary.add(outcome)
